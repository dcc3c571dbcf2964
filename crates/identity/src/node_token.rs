//! Node tokens: how a node proxy proves to the controller which node it serves.
//!
//! The controller holds a secret key. A node's token is `v1.<node>.<HMAC-SHA256(key, node)>`;
//! whoever provisions a node (the local mesh, an operator) derives it from the key, and the
//! node proxy sends it with every control-plane call (`authorization: Bearer <token>`). The
//! controller checks the MAC and then holds the proxy to the node the token names: it gets that
//! node's config and certificates for that node's workloads only, so a compromised node cannot
//! ask for another node's identities by claiming its name.

use aws_lc_rs::hmac;
use std::path::Path;

/// The controller's token key (32 random bytes).
pub struct NodeTokenKey {
    key: hmac::Key,
}

impl std::fmt::Debug for NodeTokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeTokenKey(..)")
    }
}

/// The metadata key the token travels in.
pub const TOKEN_METADATA: &str = "authorization";

const VERSION: &str = "v1";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

impl NodeTokenKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self { key: hmac::Key::new(hmac::HMAC_SHA256, bytes) }
    }

    /// Reads the key file (64 hex digits), or creates one with a random key, mode 0600.
    pub fn load_or_create(path: &Path) -> std::io::Result<Self> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let invalid = || {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: not a node token key (64 hex digits)", path.display()),
            )
        };
        if path.exists() {
            let text = std::fs::read_to_string(path)?;
            let bytes: [u8; 32] = unhex(text.trim()).ok_or_else(invalid)?.try_into().map_err(|_| invalid())?;
            return Ok(Self::from_bytes(&bytes));
        }
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| std::io::Error::other("no random bytes"))?;
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
        file.write_all(hex(&bytes).as_bytes())?;
        Ok(Self::from_bytes(&bytes))
    }

    /// The token of `node`.
    pub fn token(&self, node: &str) -> String {
        let tag = hmac::sign(&self.key, node.as_bytes());
        format!("{VERSION}.{node}.{}", hex(tag.as_ref()))
    }

    /// The node a token was made for, if its MAC is right (checked in constant time).
    pub fn verify(&self, token: &str) -> Option<String> {
        let rest = token.strip_prefix(VERSION)?.strip_prefix('.')?;
        let (node, tag) = rest.rsplit_once('.')?;
        let tag = unhex(tag)?;
        hmac::verify(&self.key, node.as_bytes(), &tag).ok()?;
        Some(node.to_owned())
    }
}

/// The token of an `authorization: Bearer <token>` value.
pub fn bearer(value: &str) -> Option<&str> {
    value.strip_prefix("Bearer ").map(str::trim)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tokens_name_their_node_and_cannot_be_forged_or_moved() {
        let key = NodeTokenKey::from_bytes(&[7; 32]);
        let token = key.token("node-1");
        assert_eq!(key.verify(&token).as_deref(), Some("node-1"));
        // Another node's name with node-1's MAC, a wrong MAC, another key, junk: refused.
        let moved = token.replace("node-1", "node-2");
        assert_eq!(key.verify(&moved), None);
        let mut tampered = token.clone();
        tampered.pop();
        tampered.push(if token.ends_with('0') { '1' } else { '0' });
        assert_eq!(key.verify(&tampered), None);
        assert_eq!(NodeTokenKey::from_bytes(&[8; 32]).verify(&token), None);
        for junk in ["", "v1", "v1.node-1", "v2.node-1.00", "v1.node-1.zz"] {
            assert_eq!(key.verify(junk), None, "{junk}");
        }
        assert_eq!(bearer(&format!("Bearer {token}")), Some(token.as_str()));
    }

    #[test]
    fn the_key_file_is_created_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("nodus-node-token-{}.key", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let created = NodeTokenKey::load_or_create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let read = NodeTokenKey::load_or_create(&path).unwrap();
        assert_eq!(read.verify(&created.token("n")).as_deref(), Some("n"));
        std::fs::write(&path, "not hex").unwrap();
        assert!(NodeTokenKey::load_or_create(&path).is_err());
        std::fs::remove_file(&path).unwrap();
    }
}
