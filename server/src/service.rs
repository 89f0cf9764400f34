//! gRPC services. Handlers are thin: they authenticate, convert protobuf
//! messages to domain types ([`convert`]), call the catalog or store on a
//! blocking thread, and map errors to statuses through `From<ServerError>`.

pub mod admin;
pub mod backup;
pub mod convert;
pub mod replication;

/// Address of the caller for logs, or `-` when unknown.
fn peer_of<T>(request: &tonic::Request<T>) -> String {
    request
        .remote_addr()
        .map_or_else(|| "-".to_string(), |a| a.to_string())
}
