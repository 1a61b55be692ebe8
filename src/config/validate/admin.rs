//! `[admin]`: the operators' listener, apart from the callers', and the purge token's hash.

use std::net::SocketAddr;

use crate::config::raw::RawAdmin;
use crate::config::{AdminConfig, DEFAULT_ADMIN_LISTEN};

use super::decode_sha256;

/// `server_listen` is the callers' address, which the admin listener must not share.
pub(super) fn validate(
    raw: RawAdmin,
    server_listen: SocketAddr,
    problems: &mut Vec<String>,
) -> AdminConfig {
    let listen = raw.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN);
    let listen = listen.parse::<SocketAddr>().unwrap_or_else(|_| {
        problems.push(format!(
            "admin.listen: `{listen}` is not an address like 127.0.0.1:9090"
        ));
        SocketAddr::from(([127, 0, 0, 1], 9090))
    });
    if listen == server_listen && server_listen.port() != 0 {
        problems.push(
            "admin.listen: must differ from server.listen: the admin endpoints never share the callers' port"
                .into(),
        );
    }
    let token_sha256 = raw.token_sha256.and_then(|hash| {
        let decoded = decode_sha256(&hash);
        if decoded.is_none() {
            problems.push(
                "admin.token_sha256: must be 64 hex characters (see `usage-gateway gen-key`)"
                    .into(),
            );
        }
        decoded
    });
    AdminConfig {
        listen,
        token_sha256,
    }
}
