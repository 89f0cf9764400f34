//! The `tandem` binary's crate: the client library with the local vault
//! tier installed. The vault itself (the server's store opened inside the
//! client) is [`tandem_server::local_vault`]; it lives in the server crate
//! because it is the server's store and service, and so that the demo,
//! which runs the client library inside `tandem-server`, can use it too.

pub use tandem_server::local_vault::LocalVault;
