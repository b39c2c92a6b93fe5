//! The errors a backend returns, and their gRPC status codes.

use tonic::{Code, Status};

/// Why a [`KvBackend`](crate::KvBackend) call failed. The `Display` text becomes the gRPC
/// status message unchanged, so the client (and the CLI) can print it as it is: write it
/// for the person at the terminal, e.g. `key too large: 70000 bytes, at most 4096`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The request itself is wrong (a key too large, a bad watch pattern, …).
    /// gRPC `INVALID_ARGUMENT`.
    #[error("{0}")]
    InvalidArgument(String),
    /// The node is not a client, so it holds no replica to read or write.
    /// gRPC `FAILED_PRECONDITION`.
    #[error("this node is a {role}: {role}s hold no replica")]
    NotAClient {
        /// The node's role, e.g. `router`.
        role: String,
    },
    /// The node cannot serve the request now (shutting down, not joined, …); retrying later
    /// may succeed. gRPC `UNAVAILABLE`.
    #[error("{0}")]
    Unavailable(String),
    /// A fault inside the node. gRPC `INTERNAL`.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The gRPC status code this error is sent with.
    pub fn code(&self) -> Code {
        match self {
            ApiError::InvalidArgument(_) => Code::InvalidArgument,
            ApiError::NotAClient { .. } => Code::FailedPrecondition,
            ApiError::Unavailable(_) => Code::Unavailable,
            ApiError::Internal(_) => Code::Internal,
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_and_code_survive_the_conversion() {
        let status = Status::from(ApiError::InvalidArgument(
            "key too large: 70000 bytes, at most 4096".into(),
        ));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "key too large: 70000 bytes, at most 4096");
        let status = Status::from(ApiError::NotAClient {
            role: "router".into(),
        });
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(
            status.message(),
            "this node is a router: routers hold no replica"
        );
    }
}
