//! The archive calls of the `Backup` service (TSM ARCHIVE, QUERY ARCHIVE,
//! RETRIEVE, DELETE ARCHIVE): the same session, limits and chunk ownership
//! as backups, into the catalog's archive table.

use tandem_proto::ObjectId;
use tandem_proto::pb;
use tonic::{Request, Response, Status};

use super::{BackupService, QUERY_BATCH, ResponseStream};
use crate::actlog::{self, ServerMsg};
use crate::catalog::{ArchiveKey, ArchivePage};
use crate::convert;
use crate::error::ServerError;
use crate::model::{ArchiveQuery, now_ns};
use crate::service::peer_of;

impl BackupService {
    /// CommitArchive: checks every copy as a backup commit checks its
    /// versions, then stores them in one transaction.
    pub(super) async fn store_archive(
        &self,
        request: Request<pb::CommitArchiveRequest>,
    ) -> Result<Response<pb::CommitArchiveResponse>, Status> {
        let (session, _) = self.session(&request)?;
        let peer = peer_of(&request);
        self.refuse_replica(&session, &peer).await?;
        let req = request.into_inner();
        convert::check_path(&req.filespace)?;
        convert::check_description(&req.description)?;
        if req.description.is_empty() {
            return Err(Status::from(ServerError::InvalidArgument(
                "an archive copy needs a description (it is how copies are found again)".into(),
            )));
        }
        convert::at_most(
            req.objects.len(),
            tandem_proto::MAX_OBJECTS_PER_CALL,
            "objects",
        )?;
        let versions = req
            .objects
            .into_iter()
            .map(|o| convert::new_version_from_pb(o, &req.filespace))
            .collect::<Result<Vec<_>, _>>()?;
        let (filespace, description) = (req.filespace, req.description);
        let node_id = session.node_id;
        let shown = description.clone();
        let committed = super::super::blocking(&self.state, move |s| {
            let _pinned = s
                .repo
                .pin_for_commit(versions.iter().flat_map(|v| &v.chunks));
            s.repo
                .catalog
                .commit_archive(node_id, &filespace, &versions, &description, now_ns())
        })
        .await?;
        if committed.stored > 0 {
            actlog::record(
                &self.state.repo.catalog,
                ServerMsg::ArchiveStored,
                &session.node,
                &peer,
                format!(
                    "archive: {} copy(ies) stored for node {} with description {shown:?}",
                    committed.stored, session.node
                ),
            )
            .await;
        }
        Ok(Response::new(pb::CommitArchiveResponse {
            stored: committed.stored,
            expires_ns: committed.expires_ns,
        }))
    }

    /// QueryArchives: the node's copies, a page at a time.
    pub(super) async fn list_archives(
        &self,
        request: Request<pb::QueryArchivesRequest>,
    ) -> Result<Response<ResponseStream<pb::QueryArchivesResponse>>, Status> {
        let (session, token) = self.session(&request)?;
        let req = request.into_inner();
        convert::check_path(&req.path_prefix)?;
        convert::check_description(&req.description)?;
        let query = ArchiveQuery {
            path_prefix: req.path_prefix,
            description: req.description,
            with_chunks: req.with_chunks,
        };
        let state = self.state.clone();
        let node_id = session.node_id;
        let page = move |after: Option<ArchiveKey>| {
            let (state, query) = (state.clone(), query.clone());
            async move {
                super::super::blocking(&state, move |s| {
                    Ok(s.repo.catalog.query_archives(
                        node_id,
                        &query,
                        after.as_ref(),
                        QUERY_BATCH,
                    )?)
                })
                .await
            }
        };
        // Held until the stream ends; a call beyond the node's slots waits.
        let slot = self
            .state
            .list_slots
            .acquire(super::super::read_slots::Reader::Node(node_id))
            .await?;
        let mut current: ArchivePage = page(None).await?;
        let (out, stream) = super::super::answer::answer(&self.state, &token, 4);
        tokio::spawn(async move {
            let _slot = slot;
            loop {
                let copies: Vec<_> = current
                    .copies
                    .into_iter()
                    .map(convert::archive_to_pb)
                    .collect();
                if !copies.is_empty() && !out.send(Ok(pb::QueryArchivesResponse { copies })).await {
                    break; // the client went away, or its session
                }
                let Some(after) = current.next else { break };
                current = match page(Some(after)).await {
                    Ok(next) => next,
                    Err(status) => {
                        out.cut_short(status);
                        break;
                    }
                };
            }
        });
        Ok(Response::new(stream))
    }

    /// DeleteArchives: the node's own copies by id; others' ids count as absent.
    pub(super) async fn remove_archives(
        &self,
        request: Request<pb::DeleteVersionsRequest>,
    ) -> Result<Response<pb::DeleteVersionsResponse>, Status> {
        let (session, _) = self.session(&request)?;
        let peer = peer_of(&request);
        let ids = object_ids(&request.into_inner())?;
        self.refuse_replica(&session, &peer).await?;
        let node_id = session.node_id;
        let deleted = super::super::blocking(&self.state, move |s| {
            Ok(s.repo.catalog.delete_node_archives(node_id, &ids)?)
        })
        .await?;
        if deleted > 0 {
            actlog::record(
                &self.state.repo.catalog,
                ServerMsg::ArchivesDeleted,
                &session.node,
                &peer,
                format!(
                    "delete archive: {deleted} archive copy(ies) of node {} deleted by its client",
                    session.node
                ),
            )
            .await;
        }
        Ok(Response::new(pb::DeleteVersionsResponse { deleted }))
    }
}

/// The object ids of a deletion: at most
/// [`tandem_proto::MAX_OBJECTS_PER_CALL`], each well-formed.
///
/// # Errors
/// `InvalidArgument` naming what is wrong.
pub(super) fn object_ids(req: &pb::DeleteVersionsRequest) -> Result<Vec<ObjectId>, Status> {
    convert::at_most(
        req.object_ids.len(),
        tandem_proto::MAX_OBJECTS_PER_CALL,
        "object ids",
    )?;
    req.object_ids
        .iter()
        .map(|raw| ObjectId::from_slice(raw))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Status::from(ServerError::InvalidArgument(e.to_string())))
}
