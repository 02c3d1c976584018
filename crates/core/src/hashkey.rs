//! The deployment's key for hashed columns (`"hash": [...]` in a mapping): HMAC-SHA256
//! (RFC 2104) over the value, as lowercase hex. The key lives in a secret store; it is never
//! printed, not even by `Debug`.

use std::sync::Arc;

use sha2::{Digest, Sha256};

/// The key. At least 16 bytes; longer than SHA-256's block it is hashed first (RFC 2104).
#[derive(Clone, PartialEq, Eq)]
pub struct HashKey(Arc<[u8]>);

impl std::fmt::Debug for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashKey(redacted)")
    }
}

const BLOCK: usize = 64;

impl HashKey {
    /// A key from its bytes (a secret's value).
    pub fn new(bytes: &[u8]) -> Result<HashKey, String> {
        if bytes.len() < 16 {
            return Err(format!(
                "the hash key has {} bytes; use at least 16 (32 random bytes, e.g. `openssl rand -hex 32`)",
                bytes.len()
            ));
        }
        Ok(HashKey(Arc::from(bytes)))
    }

    /// HMAC-SHA256 of `message`, lowercase hex (64 characters).
    pub fn hmac_hex(&self, message: &[u8]) -> String {
        let mut key = [0u8; BLOCK];
        if self.0.len() > BLOCK {
            key[..32].copy_from_slice(&Sha256::digest(&self.0));
        } else {
            key[..self.0.len()].copy_from_slice(&self.0);
        }
        let pad = |byte: u8| key.map(|k| k ^ byte);
        let inner = Sha256::new()
            .chain_update(pad(0x36))
            .chain_update(message)
            .finalize();
        let outer = Sha256::new()
            .chain_update(pad(0x5c))
            .chain_update(inner)
            .finalize();
        outer.iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_4231_test_vectors() {
        // Test case 2 has a 4-byte key, below ferry's minimum: built directly.
        let jefe = HashKey(Arc::from(&b"Jefe"[..]));
        assert_eq!(
            jefe.hmac_hex(b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a 131-byte key, hashed first.
        let long = HashKey::new(&[0xaa; 131]).unwrap();
        assert_eq!(
            long.hmac_hex(b"Test Using Larger Than Block-Size Key - Hash Key First"),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn short_keys_are_refused_and_keys_never_print() {
        assert!(HashKey::new(b"short").is_err());
        let key = HashKey::new(b"0123456789abcdef-secret").unwrap();
        assert_eq!(format!("{key:?}"), "HashKey(redacted)");
    }
}
