//! What the runtime needs to know, with its defaults and the rules a
//! config must follow. Its own file so every part of the runtime can read it
//! without depending on the part that starts the shards.

use crate::listen::ListenerSpec;
use crate::tls::TlsListeners;

/// Everything the runtime needs to know; the gateway derives it from its config.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    pub shards: usize,
    pub ring_sq_entries: u32,
    pub ring_cq_entries: u32,
    /// Size of each ring's fixed-file table: the most connections a shard
    /// holds. Capped by the open-file limit (the kernel's rule per ring).
    pub connections_per_shard_max: u32,
    pub recv_buffer_bytes: u32,
    /// Buffers in each shard's provided-buffer ring (power of two ≤ 32768).
    pub recv_buffer_count: u16,
    pub send_queue_bytes_max: usize,
    /// Capacity of each shard's inbox channel.
    pub mesh_queue_len: usize,
    pub timer_tick_ms: u64,
    pub timer_buckets: usize,
    /// How long a closing connection may take to flush and see the peer close.
    pub close_linger_ms: u64,
    /// The longest a connection's new bytes may wait for more before they
    /// are sent, reached only while the shard is saturated (0 = never wait).
    pub send_coalesce_ms_max: u64,
    /// After a stop, how long connections have to close before being aborted.
    pub stop_grace_ms: u64,
    pub pin_threads: bool,
    pub listeners: Vec<ListenerSpec>,
    /// Listeners that speak TLS (see `tls/`); `None`: none does.
    pub tls: Option<TlsListeners>,
    /// Set by the runtime: connection-table capacity reserved per shard.
    #[doc(hidden)]
    pub connections_reserved: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            ring_sq_entries: 1024,
            ring_cq_entries: 16384,
            connections_per_shard_max: 200_000,
            recv_buffer_bytes: 4096,
            recv_buffer_count: 2048,
            send_queue_bytes_max: 256 * 1024,
            mesh_queue_len: 65536,
            timer_tick_ms: 100,
            timer_buckets: 1024,
            close_linger_ms: 2000,
            send_coalesce_ms_max: 40,
            stop_grace_ms: 5000,
            pin_threads: true,
            listeners: Vec::new(),
            tls: None,
            connections_reserved: 0,
        }
    }
}

impl RuntimeConfig {
    /// The first rule this config breaks, worded for the operator.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.shards == 0 || self.shards > 4096 {
            return Err(format!("shards must be 1..=4096, not {}", self.shards));
        }
        if !self.recv_buffer_count.is_power_of_two() || self.recv_buffer_count > 32768 {
            return Err(format!(
                "recv_buffer_count must be a power of two ≤ 32768, not {}",
                self.recv_buffer_count
            ));
        }
        if self.recv_buffer_bytes == 0 || self.timer_tick_ms == 0 || self.timer_buckets < 2 {
            return Err(
                "recv_buffer_bytes, timer_tick_ms must be > 0 and timer_buckets ≥ 2".into(),
            );
        }
        if self.listeners.len() >= u8::MAX as usize {
            return Err("at most 254 listeners".into());
        }
        if let Some(tls) = &self.tls {
            if let Some(&i) = tls
                .listeners
                .iter()
                .find(|&&i| !matches!(self.listeners.get(i), Some(ListenerSpec::Tcp { .. })))
            {
                return Err(format!("TLS listener {i} is not a TCP listener"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(RuntimeConfig::default().validate(), Ok(()));
    }

    #[test]
    fn each_rule_is_named() {
        let broken = |f: fn(&mut RuntimeConfig)| {
            let mut cfg = RuntimeConfig::default();
            f(&mut cfg);
            cfg.validate().unwrap_err()
        };
        assert!(broken(|c| c.shards = 0).contains("shards"));
        assert!(broken(|c| c.recv_buffer_count = 3).contains("recv_buffer_count"));
        assert!(broken(|c| c.timer_buckets = 1).contains("timer_buckets"));
    }
}
