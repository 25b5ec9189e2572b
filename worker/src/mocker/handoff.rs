//! What the mocker models of a prefill/decode KV hand-off: the KV's size (per token, from the
//! model's geometry), the bytes that really travel (that size scaled down, so tests and
//! benchmarks stay light), and the time the full size takes over the link between the two
//! GPUs.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::{Error, Result};

/// The interconnect a hand-off crosses, with its one-direction bandwidth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvLink {
    /// NVLink 4 between two H100 SXM GPUs of one node: 900 GB/s total, 450 GB/s per
    /// direction (NVIDIA H100 Tensor Core GPU datasheet).
    #[default]
    Nvlink,
    /// PCIe Gen5 x16: 32 GT/s × 16 lanes with 128b/130b encoding ≈ 63 GB/s per direction
    /// (PCI-SIG, PCI Express Base Specification 5.0).
    Pcie5,
    /// 400G InfiniBand NDR: 400 Gb/s = 50 GB/s per direction (NVIDIA ConnectX-7 datasheet).
    Ib400,
    /// 25 Gigabit Ethernet: 25 Gb/s ≈ 3.1 GB/s per direction (IEEE 802.3by).
    Eth25,
}

impl KvLink {
    pub const ALL: [KvLink; 4] = [KvLink::Nvlink, KvLink::Pcie5, KvLink::Ib400, KvLink::Eth25];

    pub fn name(self) -> &'static str {
        match self {
            KvLink::Nvlink => "nvlink",
            KvLink::Pcie5 => "pcie5",
            KvLink::Ib400 => "ib400",
            KvLink::Eth25 => "eth25",
        }
    }

    /// Bytes per second in one direction.
    pub fn bytes_per_second(self) -> f64 {
        match self {
            KvLink::Nvlink => 450e9,
            KvLink::Pcie5 => 63e9,
            KvLink::Ib400 => 50e9,
            KvLink::Eth25 => 3.125e9,
        }
    }

    /// Simulated milliseconds to move `bytes` over the link.
    pub fn transfer_ms(self, bytes: u64) -> f64 {
        bytes as f64 / self.bytes_per_second() * 1000.0
    }
}

impl fmt::Display for KvLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KvLink {
    type Err = Error;

    fn from_str(s: &str) -> Result<KvLink> {
        KvLink::ALL.into_iter().find(|l| l.name() == s).ok_or_else(|| {
            Error::Config(format!(
                "unknown KV link {s:?}; known: {}",
                KvLink::ALL.map(KvLink::name).join(", ")
            ))
        })
    }
}

/// The hand-off settings of a mocker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandoffConfig {
    /// KV bytes of one token: layers × KV heads × head dim × 2 (K and V) × bytes per element.
    pub kv_bytes_per_token: u64,
    /// The bytes that travel are the full size divided by this (≥ 1).
    pub scale: u64,
    pub link: KvLink,
    /// How long a prefill worker holds a hand-off's blocks for a pull.
    pub lease: Duration,
}

impl Default for HandoffConfig {
    fn default() -> Self {
        HandoffConfig {
            // Llama-3.1-8B in bf16 (32 layers, 8 KV heads of 128, 2 bytes), the class of model
            // the default H100 timing profile stands for.
            kv_bytes_per_token: 32 * 8 * 128 * 2 * 2,
            scale: 1024,
            link: KvLink::default(),
            lease: Duration::from_secs(30),
        }
    }
}

impl HandoffConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        if self.kv_bytes_per_token == 0 || self.scale == 0 {
            return Err(Error::Config(
                "mocker: kv_bytes_per_token and the KV transfer scale must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The engine's full KV size of `tokens` tokens.
    pub fn full_bytes(&self, tokens: usize) -> u64 {
        self.kv_bytes_per_token.saturating_mul(tokens as u64)
    }

    /// Bytes that travel for `tokens` tokens in `blocks` blocks of `block_size`: each block's
    /// share of the scaled size, at least 8 bytes so every block carries its hash.
    fn block_bytes(&self, tokens_in_block: usize) -> usize {
        let scaled = self.full_bytes(tokens_in_block) / self.scale;
        usize::try_from(scaled).unwrap_or(usize::MAX).max(8)
    }

    /// The bytes of a hand-off of `tokens` prompt tokens whose full blocks hash to `hashes`:
    /// each block's bytes repeat its hash (the partial last block repeats the last full
    /// block's hash with its index), so the receiver can check what it got.
    pub fn encode(&self, tokens: usize, block_size: usize, hashes: &[u64]) -> Vec<u8> {
        let mut data = Vec::new();
        let mut pattern = Vec::new();
        for (i, len) in block_lengths(tokens, block_size).enumerate() {
            let bytes = self.block_bytes(len);
            // Copied in whole slices: a hand-off is megabytes, byte-wise filling shows.
            pattern.clear();
            pattern
                .extend_from_slice(&block_word(hashes, i).to_le_bytes().repeat(bytes.div_ceil(8)));
            data.extend_from_slice(&pattern[..bytes]);
        }
        data
    }

    /// Checks `data` against what [`HandoffConfig::encode`] makes of the same handle.
    pub fn verify(
        &self,
        data: &[u8],
        tokens: usize,
        block_size: usize,
        hashes: &[u64],
    ) -> Result<()> {
        let expected = self.encode(tokens, block_size, hashes);
        if data.len() != expected.len() {
            return Err(Error::Engine(format!(
                "KV hand-off of {tokens} tokens: {} bytes, expected {}",
                data.len(),
                expected.len()
            )));
        }
        if data != expected.as_slice() {
            return Err(Error::Engine(format!(
                "KV hand-off of {tokens} tokens: the bytes do not match the block hashes"
            )));
        }
        Ok(())
    }
}

/// Token counts of the blocks holding `tokens` tokens.
fn block_lengths(tokens: usize, block_size: usize) -> impl Iterator<Item = usize> {
    let block_size = block_size.max(1);
    (0..tokens.div_ceil(block_size)).map(move |i| (tokens - i * block_size).min(block_size))
}

fn block_word(hashes: &[u64], i: usize) -> u64 {
    match hashes.get(i) {
        Some(&hash) => hash,
        None => {
            hashes.last().copied().unwrap_or(0) ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_model_their_bandwidth() {
        // 512 MiB (4,096 tokens of an 8B model) over each link.
        let bytes = HandoffConfig::default().full_bytes(4096);
        assert_eq!(bytes, 512 << 20);
        let ms: Vec<f64> = KvLink::ALL.iter().map(|l| l.transfer_ms(bytes)).collect();
        assert!((ms[0] - 1.193).abs() < 0.01, "{ms:?}");
        assert!((ms[3] - 171.8).abs() < 0.1, "{ms:?}");
        assert_eq!("ib400".parse::<KvLink>().expect("valid in this test"), KvLink::Ib400);
        assert!("carrier-pigeon".parse::<KvLink>().is_err());
    }

    #[test]
    fn encoded_bytes_are_scaled_and_checked() {
        let config = HandoffConfig::default();
        let hashes = [11, 22, 33];
        let data = config.encode(50, 16, &hashes);
        // 50 tokens × 128 KiB / 1024 = 6,400 bytes.
        assert_eq!(data.len(), 6400);
        config.verify(&data, 50, 16, &hashes).expect("valid in this test");
        let mut bad = data.clone();
        bad[100] ^= 1;
        assert!(config.verify(&bad, 50, 16, &hashes).is_err());
        assert!(config.verify(&data[..6000], 50, 16, &hashes).is_err());
        assert!(config.verify(&data, 50, 16, &[11, 22, 34]).is_err());
    }
}
