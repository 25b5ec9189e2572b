//! The file store's on-disk format: file names for keys, key and lease records, and the
//! atomic writes and tolerant reads that several processes can share.

use std::fmt::Write as _;
use std::io::ErrorKind;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::store::LeaseId;
use crate::{Error, Result};

/// Most file systems limit a file name to 255 bytes.
const MAX_FILE_NAME: usize = 255;

pub(super) struct LeaseRecord {
    pub(super) deadline_ms: u64,
    pub(super) ttl_ms: u64,
}

impl LeaseRecord {
    pub(super) fn starting_now(ttl: Duration) -> LeaseRecord {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        LeaseRecord { deadline_ms: now_ms().saturating_add(ttl_ms), ttl_ms }
    }

    /// The content of a lease file.
    pub(super) fn render(&self) -> String {
        format!("deadline_ms={} ttl_ms={}\n", self.deadline_ms, self.ttl_ms)
    }

    pub(super) fn is_live(&self, now_ms: u64) -> bool {
        now_ms < self.deadline_ms
    }

    pub(super) fn parse(content: &[u8]) -> Option<LeaseRecord> {
        let text = std::str::from_utf8(content).ok()?;
        let mut fields = text.split_whitespace();
        let deadline_ms = fields.next()?.strip_prefix("deadline_ms=")?.parse().ok()?;
        let ttl_ms = fields.next()?.strip_prefix("ttl_ms=")?.parse().ok()?;
        Some(LeaseRecord { deadline_ms, ttl_ms })
    }
}

pub(super) struct KeyRecord {
    pub(super) lease: Option<LeaseId>,
    pub(super) value: Vec<u8>,
}

impl KeyRecord {
    /// The content of a key file: `lease=<id>` (`0` when unleased), a newline, the value.
    pub(super) fn render(lease: Option<LeaseId>, value: &[u8]) -> Vec<u8> {
        let mut content = format!("lease={}\n", lease.unwrap_or(0)).into_bytes();
        content.extend_from_slice(value);
        content
    }

    pub(super) fn parse(mut content: Vec<u8>) -> Option<KeyRecord> {
        let newline = content.iter().position(|b| *b == b'\n')?;
        let header = std::str::from_utf8(&content[..newline]).ok()?;
        let lease: LeaseId = header.strip_prefix("lease=")?.parse().ok()?;
        let value = content.split_off(newline + 1);
        Some(KeyRecord { lease: (lease != 0).then_some(lease), value })
    }
}

pub(super) fn now_ms() -> u64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

/// Writes `dir/name` so that readers see either the old content or all of the new.
pub(super) fn write_atomic(dir: &Path, name: &str, content: &[u8]) -> Result<()> {
    let temp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&temp, content)?;
    if let Err(e) = std::fs::rename(&temp, dir.join(name)) {
        let _ = std::fs::remove_file(&temp);
        return Err(e.into());
    }
    Ok(())
}

pub(super) fn read_if_present(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(content) => Ok(Some(content)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Removes `path`; whether it was there (another process may have removed it first).
pub(super) fn remove_if_present(path: &Path) -> Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Percent-encodes every byte but ASCII letters, digits, `-` and `_`, so any key becomes one
/// valid file name that never starts with the temp files' dot.
pub(super) fn encode_key(key: &str) -> Result<String> {
    if key.is_empty() {
        return Err(Error::Store("empty key".into()));
    }
    let mut name = String::with_capacity(key.len() * 3);
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            name.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(name, "%{byte:02X}");
        }
    }
    if name.len() > MAX_FILE_NAME {
        return Err(Error::Store(format!("key too long for the file store: {key}")));
    }
    Ok(name)
}

pub(super) fn decode_key(name: &str) -> Option<String> {
    let bytes = name.as_bytes();
    let mut key = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                key.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' => {
                key.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(key).ok().filter(|key| !key.is_empty())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_file_names() {
        for key in ["/switchyard/default/instances/abc", "a b%c/é/..", ".", "-_x"] {
            let name = encode_key(key).unwrap();
            assert!(!name.starts_with('.'));
            assert!(!name.contains('/'));
            assert_eq!(decode_key(&name).as_deref(), Some(key));
        }
        assert!(encode_key("").is_err());
        assert!(encode_key(&"/".repeat(100)).is_err());
        assert_eq!(decode_key(".tmp-abc"), None);
        assert_eq!(decode_key("%2"), None);
    }

    #[test]
    fn records_parse() {
        let key = KeyRecord::parse(b"lease=42\n{\"a\":\n1}".to_vec()).unwrap();
        assert_eq!(key.lease, Some(42));
        assert_eq!(key.value, b"{\"a\":\n1}");
        assert_eq!(KeyRecord::parse(b"lease=0\n".to_vec()).unwrap().lease, None);
        assert!(KeyRecord::parse(b"no header".to_vec()).is_none());
        let lease = LeaseRecord::parse(b"deadline_ms=100 ttl_ms=10\n").unwrap();
        assert!(lease.is_live(99) && !lease.is_live(100));
    }
}
