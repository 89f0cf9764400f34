//! UPDATE NODE|ADMIN|SERVER: lock, unlock, policy, password, replication settings.

use tandem_proto::pb;

use crate::console::AdminError;
use crate::console::cli::UpdateNoun;
use crate::console::connect::Console;
use crate::console::render::{Format, print_rows};
use crate::model::{ReplRule, ReplState};

/// Runs `update` for `noun`; `secret` is the password read before connecting.
pub(in crate::console) async fn run(
    console: &Console,
    noun: UpdateNoun,
    secret: Option<String>,
    format: Format,
) -> Result<(), AdminError> {
    match noun {
        UpdateNoun::Server {
            name,
            address,
            fingerprint,
            ..
        } => {
            let req = console.request(pb::UpdateServerRequest {
                name,
                address: address.unwrap_or_default(),
                password: secret.unwrap_or_default(),
                fingerprint: fingerprint.unwrap_or_default(),
            });
            let server = console.answer(console.client().update_server(req)).await?;
            if format.for_people() {
                tandem_client::outln!("TDM0500I server {} updated", server.name);
            }
            print_rows(&[server], format);
        }
        UpdateNoun::Node {
            name,
            lock,
            unlock,
            verexists,
            verdeleted,
            retextra,
            retonly,
            retver,
            replstate,
            replrule,
            pool,
            ..
        } => {
            let locked = if lock {
                Some(true)
            } else if unlock {
                Some(false)
            } else {
                None
            };
            if locked.is_none()
                && secret.is_none()
                && replstate.is_none()
                && replrule.is_none()
                && pool.is_none()
                && [verexists, verdeleted, retextra, retonly, retver]
                    .iter()
                    .all(Option::is_none)
            {
                return Err(AdminError::Usage(
                    "nothing to update: give --lock, --unlock, a policy value, --replstate, --replrule, --pool or --password-file"
                        .into(),
                ));
            }
            let req = console.request(pb::UpdateNodeRequest {
                name,
                locked,
                policy: Some(pb::PolicyUpdate {
                    verexists,
                    verdeleted,
                    retextra,
                    retonly,
                    retver,
                }),
                password: secret,
                replstate: replstate.map(ReplState::to_pb),
                replrule: replrule.map(ReplRule::to_pb),
                pool,
            });
            let node = console.answer(console.client().update_node(req)).await?;
            if format.for_people() {
                tandem_client::outln!("TDM0500I node {} updated", node.name);
            }
            print_rows(&[node], format);
        }
        UpdateNoun::Admin {
            name, lock, unlock, ..
        } => {
            let req = console.request(pb::UpdateAdminRequest {
                name,
                password: secret.unwrap_or_default(),
                lock,
                unlock,
            });
            let admin = console.answer(console.client().update_admin(req)).await?;
            if format.for_people() {
                tandem_client::outln!("TDM0500I administrator {} updated", admin.name);
            }
            print_rows(&[admin], format);
        }
    }
    Ok(())
}
