//! KV events from an engine's ZeroMQ publisher (vLLM's `--kv-events-config`, SGLang's
//! `--kv-events-config`), re-hashed the Switchyard way.
//!
//! The publisher sends multipart messages `[topic, sequence (u64 big-endian), payload]`; the
//! payload is msgpack `EventBatch = [ts, [event, …], data_parallel_rank?]`, each event tagged
//! `BlockStored {block_hashes, parent_block_hash, token_ids, block_size, …}`,
//! `BlockRemoved {block_hashes, …}` or `AllBlocksCleared` (as a map with a `type` key, or an
//! array led by the tag). The engine's block hashes are its own; the worker recomputes
//! Switchyard's from the token ids (chained to the parent's), remembers which engine hash is
//! which, and publishes stored/removed/cleared events with its own event ids, so `kv` routing
//! works on a real engine exactly as on the mocker.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rmpv::Value;
use switchyard_proto::{KvCleared, KvEvent, KvRemoved, KvSnapshot, KvStored, kv_event};
use switchyard_router::block_hashes_after;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use xxhash_rust::xxh3::xxh3_64;
use zeromq::{Socket, SocketRecv, SubSocket};

/// Events a slow subscriber may fall behind by before it sees a gap in event ids.
const BUFFER: usize = 16_384;
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// The worker's side of an engine's KV event publisher.
pub struct KvEventSource {
    events: broadcast::Sender<KvEvent>,
    snapshot: Arc<Notify>,
}

impl KvEventSource {
    /// Subscribes to `endpoint` (e.g. `tcp://127.0.0.1:5557`) until `stop`, in a task of
    /// `tasks`; blocks are `block_size` tokens.
    pub fn start(
        endpoint: String,
        block_size: u32,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) -> KvEventSource {
        let (events, _) = broadcast::channel(BUFFER);
        let snapshot = Arc::new(Notify::new());
        let state = Rehasher::new(block_size);
        tasks.spawn(subscribe(endpoint, state, events.clone(), snapshot.clone(), stop));
        KvEventSource { events, snapshot }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<KvEvent> {
        self.events.subscribe()
    }

    /// Asks for a snapshot of every block known cached, in the event sequence.
    pub fn request_snapshot(&self) -> bool {
        self.snapshot.notify_one();
        true
    }
}

async fn subscribe(
    endpoint: String,
    mut state: Rehasher,
    events: broadcast::Sender<KvEvent>,
    snapshot: Arc<Notify>,
    stop: CancellationToken,
) {
    let emit = |data: kv_event::Data, state: &mut Rehasher| {
        state.next_id += 1;
        let _ = events.send(KvEvent { event_id: state.next_id, data: Some(data) });
    };
    loop {
        let mut socket = SubSocket::new();
        let connected = async {
            socket.connect(&endpoint).await?;
            socket.subscribe("").await
        };
        if let Err(e) = connected.await {
            warn!(endpoint = %endpoint, error = %e, "cannot subscribe to the engine's KV events; retrying");
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(RECONNECT_AFTER) => continue,
            }
        }
        info!(endpoint = %endpoint, "subscribed to the engine's KV events");
        loop {
            let message = tokio::select! {
                () = stop.cancelled() => return,
                () = snapshot.notified() => {
                    let chains = state.snapshot();
                    emit(kv_event::Data::Snapshot(KvSnapshot { chains }), &mut state);
                    continue;
                }
                message = socket.recv() => message,
            };
            let message = match message {
                Ok(message) => message,
                Err(e) => {
                    warn!(endpoint = %endpoint, error = %e, "KV event stream broke; reconnecting");
                    break;
                }
            };
            let frames = message.into_vec();
            let (Some(seq), Some(payload)) =
                (frames.get(frames.len().wrapping_sub(2)), frames.last())
            else {
                continue;
            };
            let seq = seq.as_ref().try_into().map(u64::from_be_bytes).ok();
            if let Some(seq) = seq {
                if let Some(last) = state.last_seq
                    && seq != last + 1
                {
                    // Events were lost: what routers know of this worker is no longer true.
                    warn!(expected = last + 1, got = seq, "gap in the engine's KV events");
                    state.clear();
                    emit(kv_event::Data::Cleared(KvCleared {}), &mut state);
                }
                state.last_seq = Some(seq);
            }
            match decode_batch(payload) {
                Ok(batch) => {
                    for event in batch {
                        for data in state.apply(event) {
                            emit(data, &mut state);
                        }
                    }
                }
                Err(e) => warn!(error = %e, "undecodable KV event batch"),
            }
        }
        // A new connection may have missed events: start over.
        state.clear();
        state.last_seq = None;
        emit(kv_event::Data::Cleared(KvCleared {}), &mut state);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(RECONNECT_AFTER) => {}
        }
    }
}

/// One engine event, its block hashes reduced to keys.
#[derive(Debug, PartialEq)]
pub enum EngineEvent {
    Stored { parent: Option<u64>, blocks: Vec<u64>, token_ids: Vec<u32>, block_size: u32 },
    Removed { blocks: Vec<u64> },
    Cleared,
}

/// Decodes one msgpack `EventBatch`.
pub fn decode_batch(payload: &[u8]) -> Result<Vec<EngineEvent>, String> {
    let value = rmpv::decode::read_value(&mut &payload[..]).map_err(|e| e.to_string())?;
    let events = match &value {
        Value::Array(fields) => fields.get(1).and_then(Value::as_array),
        Value::Map(_) => field(&value, "events").and_then(Value::as_array),
        _ => None,
    }
    .ok_or("an event batch is [ts, events, …]")?;
    events.iter().filter_map(|e| decode_event(e).transpose()).collect()
}

/// One event; `None` for kinds Switchyard does not use.
fn decode_event(event: &Value) -> Result<Option<EngineEvent>, String> {
    // Tagged as a map (`{"type": "BlockStored", …}`) or an array (`["BlockStored", …]`).
    let tag = match event {
        Value::Map(_) => {
            field(event, "type").and_then(Value::as_str).ok_or("event without a type")?
        }
        Value::Array(items) => {
            items.first().and_then(Value::as_str).ok_or("event without a tag")?
        }
        _ => return Err("an event is a map or an array".into()),
    };
    // A field by name in the map form, by position in the array form.
    let get = |name: &str, index: usize| match event {
        Value::Array(items) => items.get(index),
        _ => field(event, name),
    };
    let hashes = |v: Option<&Value>| -> Vec<u64> {
        v.and_then(Value::as_array)
            .map(|a| a.iter().filter_map(hash_key).collect())
            .unwrap_or_default()
    };
    Ok(match tag {
        "BlockStored" => Some(EngineEvent::Stored {
            blocks: hashes(get("block_hashes", 1)),
            parent: get("parent_block_hash", 2).and_then(hash_key),
            token_ids: get("token_ids", 3)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()))
                        .collect()
                })
                .unwrap_or_default(),
            block_size: get("block_size", 4)
                .and_then(Value::as_u64)
                .and_then(|b| u32::try_from(b).ok())
                .unwrap_or(0),
        }),
        "BlockRemoved" => Some(EngineEvent::Removed { blocks: hashes(get("block_hashes", 1)) }),
        "AllBlocksCleared" => Some(EngineEvent::Cleared),
        _ => None,
    })
}

fn field<'a>(map: &'a Value, name: &str) -> Option<&'a Value> {
    map.as_map()?.iter().find(|(k, _)| k.as_str() == Some(name)).map(|(_, v)| v)
}

/// An engine block hash (an integer, or bytes) as a key.
fn hash_key(v: &Value) -> Option<u64> {
    match v {
        Value::Integer(i) => i.as_u64().or_else(|| i.as_i64().map(i64::cast_unsigned)),
        Value::Binary(b) => Some(xxh3_64(b)),
        _ => None,
    }
}

/// What the worker knows of the engine's cache: engine block → Switchyard's hash and parent.
pub struct Rehasher {
    block_size: u32,
    blocks: HashMap<u64, Block>,
    /// Order blocks were stored in, for snapshots (parents before children).
    order: u64,
    next_id: u64,
    last_seq: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct Block {
    ours: u64,
    parent: Option<u64>,
    stored_at: u64,
}

impl Rehasher {
    pub fn new(block_size: u32) -> Rehasher {
        Rehasher { block_size, blocks: HashMap::new(), order: 0, next_id: 0, last_seq: None }
    }

    /// Switchyard's events for one engine event.
    pub fn apply(&mut self, event: EngineEvent) -> Vec<kv_event::Data> {
        match event {
            EngineEvent::Stored { parent, blocks, token_ids, block_size } => {
                let size = if block_size > 0 { block_size } else { self.block_size };
                if size != self.block_size {
                    warn!(
                        engine = size,
                        ours = self.block_size,
                        "the engine's KV block size differs from the card's; its events are not used"
                    );
                    return Vec::new();
                }
                let our_parent = match parent {
                    Some(p) => match self.blocks.get(&p) {
                        Some(block) => Some(block.ours),
                        // A parent we never saw stored: its chain cannot be placed.
                        None => return Vec::new(),
                    },
                    None => None,
                };
                let ours = block_hashes_after(our_parent.unwrap_or(0), &token_ids, size as usize);
                let mut prev = our_parent;
                for (engine_hash, &our) in blocks.iter().zip(&ours) {
                    self.order += 1;
                    self.blocks.insert(
                        *engine_hash,
                        Block { ours: our, parent: prev, stored_at: self.order },
                    );
                    prev = Some(our);
                }
                let n = ours.len().min(blocks.len());
                if n == 0 {
                    return Vec::new();
                }
                vec![kv_event::Data::Stored(KvStored {
                    parent_hash: our_parent,
                    block_hashes: ours[..n].to_vec(),
                })]
            }
            EngineEvent::Removed { blocks } => {
                let removed: Vec<u64> =
                    blocks.iter().filter_map(|b| self.blocks.remove(b)).map(|b| b.ours).collect();
                if removed.is_empty() {
                    return Vec::new();
                }
                vec![kv_event::Data::Removed(KvRemoved { block_hashes: removed })]
            }
            EngineEvent::Cleared => {
                self.clear();
                vec![kv_event::Data::Cleared(KvCleared {})]
            }
        }
    }

    fn clear(&mut self) {
        self.blocks.clear();
    }

    /// Every known block as a one-block chain, parents first.
    fn snapshot(&self) -> Vec<KvStored> {
        let mut blocks: Vec<&Block> = self.blocks.values().collect();
        blocks.sort_by_key(|b| b.stored_at);
        blocks
            .into_iter()
            .map(|b| KvStored { parent_hash: b.parent, block_hashes: vec![b.ours] })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_router::block_hashes;

    fn encode(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, v).expect("encodes");
        out
    }

    fn stored_map(hashes: &[u64], parent: Option<u64>, tokens: &[u32]) -> Value {
        Value::Map(vec![
            ("type".into(), "BlockStored".into()),
            ("block_hashes".into(), Value::Array(hashes.iter().map(|&h| h.into()).collect())),
            ("parent_block_hash".into(), parent.map_or(Value::Nil, Value::from)),
            ("token_ids".into(), Value::Array(tokens.iter().map(|&t| t.into()).collect())),
            ("block_size".into(), 2.into()),
            ("medium".into(), "GPU".into()),
        ])
    }

    #[test]
    fn batches_decode_in_both_tagged_forms() {
        let batch = Value::Array(vec![
            1.5.into(),
            Value::Array(vec![
                stored_map(&[100], None, &[1, 2]),
                Value::Array(vec![
                    "BlockRemoved".into(),
                    Value::Array(vec![100.into()]),
                    "GPU".into(),
                ]),
                Value::Map(vec![("type".into(), "AllBlocksCleared".into())]),
                Value::Binary(vec![1, 2, 3]),
            ]),
        ]);
        let events = decode_batch(&encode(&batch));
        assert!(events.is_err(), "an event that is neither map nor array is an error");
        let batch = Value::Array(vec![
            1.5.into(),
            Value::Array(vec![
                stored_map(&[100], None, &[1, 2]),
                Value::Array(vec![
                    "BlockRemoved".into(),
                    Value::Array(vec![100.into()]),
                    "GPU".into(),
                ]),
                Value::Map(vec![("type".into(), "AllBlocksCleared".into())]),
            ]),
        ]);
        let events = decode_batch(&encode(&batch)).expect("decodes");
        assert_eq!(
            events,
            vec![
                EngineEvent::Stored {
                    parent: None,
                    blocks: vec![100],
                    token_ids: vec![1, 2],
                    block_size: 2
                },
                EngineEvent::Removed { blocks: vec![100] },
                EngineEvent::Cleared,
            ]
        );
    }

    #[test]
    fn stored_blocks_get_switchyard_hashes_chained_to_their_parent() {
        let mut r = Rehasher::new(2);
        let whole = block_hashes(&[1, 2, 3, 4, 5, 6], 2);
        let first = r.apply(EngineEvent::Stored {
            parent: None,
            blocks: vec![10],
            token_ids: vec![1, 2],
            block_size: 2,
        });
        assert_eq!(
            first,
            vec![kv_event::Data::Stored(KvStored {
                parent_hash: None,
                block_hashes: vec![whole[0]]
            })]
        );
        let next = r.apply(EngineEvent::Stored {
            parent: Some(10),
            blocks: vec![11, 12],
            token_ids: vec![3, 4, 5, 6],
            block_size: 2,
        });
        assert_eq!(
            next,
            vec![kv_event::Data::Stored(KvStored {
                parent_hash: Some(whole[0]),
                block_hashes: whole[1..].to_vec()
            })]
        );
        assert_eq!(r.snapshot().len(), 3);
        let removed = r.apply(EngineEvent::Removed { blocks: vec![12, 99] });
        assert_eq!(
            removed,
            vec![kv_event::Data::Removed(KvRemoved { block_hashes: vec![whole[2]] })]
        );
        // A chain whose parent was never seen cannot be placed.
        assert!(
            r.apply(EngineEvent::Stored {
                parent: Some(77),
                blocks: vec![13],
                token_ids: vec![7, 8],
                block_size: 2
            })
            .is_empty()
        );
    }
}
