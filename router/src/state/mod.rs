//! The routing state: everything a router knows of the live instances — per model a KV
//! index, each instance's role, last load report and what this router booked on it — and the
//! one decision made over it, [`RoutingState::select`]: the decode (or aggregated) instance,
//! and for a model with prefill instances whether and where the prompt is prefilled first.
//!
//! Pure and synchronous: its owner feeds it discovery changes, KV events and load reports,
//! passes `now` (a monotonic time from any fixed origin) where time matters, and keeps it
//! behind whatever lock it likes.

mod disagg;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::Error;
use crate::kv_index::{Applied, InstanceId, KvEvent, KvIndex};
use crate::policy::{Candidate, Policy, RequestInfo};
pub use disagg::{DisaggConfig, LocalReason, PrefillPlace};

/// What an instance does, as its record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Role {
    /// Prefill and decode: takes whole requests.
    #[default]
    Aggregated,
    /// Computes prompts and hands their KV to a decode instance.
    Prefill,
    /// Takes whole requests; when the model has prefill instances, usually after one of
    /// them computed the prompt.
    Decode,
}

impl Role {
    /// Whether the instance takes whole requests (aggregated instances count as decode).
    pub fn decodes(self) -> bool {
        !matches!(self, Role::Prefill)
    }
}

/// One live instance, as discovery lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceSpec<'a> {
    pub instance: &'a str,
    pub model: &'a str,
    pub role: Role,
}

/// An instance's own report of its load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InstanceLoad {
    pub active_requests: u32,
    pub waiting_requests: u32,
    pub active_kv_blocks: u64,
    pub total_kv_blocks: u64,
}

/// Settings of a [`RoutingState`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoutingConfig {
    /// How long a decision stands in for the KV events of an instance that sends none.
    pub decision_ttl: Duration,
    pub disagg: DisaggConfig,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig { decision_ttl: Duration::from_secs(120), disagg: DisaggConfig::default() }
    }
}

/// One request to route.
#[derive(Debug, Clone, Copy)]
pub struct RouteRequest<'a> {
    pub model: &'a str,
    /// Chained KV block hashes of the prompt.
    pub block_hashes: &'a [u64],
    pub prompt_tokens: usize,
    /// Tokens per KV block of the model's instances (0: unknown).
    pub block_size: usize,
    /// Instances not to choose (tried already).
    pub exclude: &'a [Arc<str>],
    /// False: the prompt is prefilled on the decode instance whatever the model has.
    pub allow_remote_prefill: bool,
}

/// What this router booked on an instance for one request; give it back to
/// [`RoutingState::release`] when the request (or its part there) ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Booking {
    pub instance: Arc<str>,
    pub blocks: u64,
}

/// The prefill instance chosen for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefillChoice {
    pub booking: Booking,
    /// Leading prompt blocks it already holds.
    pub overlap_blocks: u32,
}

/// [`RoutingState::select`]'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The instance that decodes (and, with `prefill` `None`, prefills too).
    pub decode: Booking,
    /// Leading prompt blocks the decode instance already holds.
    pub decode_overlap_blocks: u32,
    pub place: PrefillPlace,
    /// Set when `place` is [`PrefillPlace::Remote`].
    pub prefill: Option<PrefillChoice>,
}

#[derive(Debug)]
struct Entry {
    name: Arc<str>,
    role: Role,
    handle: InstanceId,
    load: Option<InstanceLoad>,
    /// KV blocks and requests this router has booked on it and not yet released.
    booked_blocks: u64,
    booked_requests: u32,
}

impl Entry {
    fn candidate(&self, overlap_blocks: u32) -> Candidate<'_> {
        let mut candidate = Candidate::new(&self.name, self.booked_requests);
        candidate.overlap_blocks = overlap_blocks;
        candidate.active_decode_blocks = self.booked_blocks;
        if let Some(load) = &self.load {
            candidate.active_requests = load.active_requests;
            candidate.waiting_requests = load.waiting_requests;
            candidate.active_decode_blocks = load.active_kv_blocks.max(self.booked_blocks);
            if load.total_kv_blocks > 0 {
                candidate.kv_usage =
                    (load.active_kv_blocks as f64 / load.total_kv_blocks as f64) as f32;
            }
        }
        candidate
    }
}

/// The live instances of one model.
#[derive(Debug, Default)]
struct ModelRoutes {
    index: KvIndex,
    instances: Vec<Entry>,
    positions: HashMap<Arc<str>, usize>,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct RoutingState {
    models: HashMap<Box<str>, ModelRoutes>,
    /// The model of each live instance.
    owners: HashMap<Arc<str>, Box<str>>,
    config: RoutingConfig,
}

impl RoutingState {
    pub fn new(config: RoutingConfig) -> RoutingState {
        RoutingState { config, ..RoutingState::default() }
    }

    pub fn config(&self) -> &RoutingConfig {
        &self.config
    }

    /// Makes `live` the instances routed to: new ones join (with an empty cache), departed
    /// ones leave the index, changed roles are taken. Bookings on departed instances are
    /// forgotten; releasing them later does nothing.
    pub fn sync<'a>(&mut self, live: impl IntoIterator<Item = InstanceSpec<'a>>) {
        let mut wanted: HashMap<&str, (&str, Role)> = HashMap::new();
        for spec in live {
            wanted.insert(spec.instance, (spec.model, spec.role));
        }
        // Drop instances gone or moved to another model.
        let owners = std::mem::take(&mut self.owners);
        for (name, model) in owners {
            let stays = wanted.get(&*name).is_some_and(|(m, _)| *m == &*model);
            if stays {
                self.owners.insert(name, model);
            } else if let Some(routes) = self.models.get_mut(&model) {
                routes.remove(&name);
            }
        }
        for (instance, (model, role)) in wanted {
            let routes = self.models.entry(model.into()).or_default();
            match routes.positions.get(instance) {
                Some(&at) => routes.instances[at].role = role,
                None => {
                    let name: Arc<str> = instance.into();
                    let handle = routes.index.add_instance(instance);
                    routes.positions.insert(name.clone(), routes.instances.len());
                    routes.instances.push(Entry {
                        name: name.clone(),
                        role,
                        handle,
                        load: None,
                        booked_blocks: 0,
                        booked_requests: 0,
                    });
                    self.owners.insert(name, model.into());
                }
            }
        }
        self.models.retain(|_, routes| !routes.instances.is_empty());
    }

    /// Applies one KV event of `instance`. `None` for an instance not in discovery.
    pub fn apply_kv(
        &mut self,
        instance: &str,
        event: &KvEvent<'_>,
    ) -> Option<Result<Applied, Error>> {
        let (routes, at) = self.routes_of(instance)?;
        let handle = routes.instances[at].handle;
        Some(routes.index.apply(handle, event))
    }

    /// Replaces what the index holds for `instance` with a snapshot the instance took as its
    /// event `event_id`, unless later events were applied already. `None` for an instance not
    /// in discovery; `Some(Ok(false))` when the snapshot was older or did not fit whole.
    pub fn resync<'h>(
        &mut self,
        instance: &str,
        event_id: u64,
        chains: impl IntoIterator<Item = (Option<u64>, &'h [u64])>,
    ) -> Option<Result<bool, Error>> {
        let (routes, at) = self.routes_of(instance)?;
        let handle = routes.instances[at].handle;
        if routes.index.next_event_id(handle).is_some_and(|next| event_id < next) {
            return Some(Ok(false));
        }
        Some(routes.index.resync(handle, event_id.saturating_add(1), chains))
    }

    /// Takes `instance`'s load report. False for an instance not in discovery.
    pub fn apply_load(&mut self, instance: &str, load: InstanceLoad) -> bool {
        let Some((routes, at)) = self.routes_of(instance) else {
            return false;
        };
        routes.instances[at].load = Some(load);
        true
    }

    /// Chooses where `request` goes and books it there: the decode instance by `policy` over
    /// the model's aggregated and decode instances (overlap and load), then, when the model
    /// has prefill instances, the conditional decision and the prefill instance by `policy`
    /// over those that accept more. `None` when no decode-capable instance is left.
    pub fn select(
        &mut self,
        request: &RouteRequest<'_>,
        policy: &dyn Policy,
        now: Duration,
    ) -> Option<Selection> {
        let disagg = self.config.disagg;
        let ttl = self.config.decision_ttl;
        let routes = self.models.get_mut(request.model)?;
        routes.index.expire(now);
        let scores = routes.index.find_matches(request.block_hashes);
        let info = RequestInfo::new(request.block_hashes, request.prompt_tokens);
        let excluded = |e: &Entry| request.exclude.iter().any(|x| **x == *e.name);

        // One pass sorts the usable instances into decode and prefill candidates; the
        // prefill side is scored only if the request is split.
        let n = routes.instances.len();
        let (mut decode_at, mut decoders) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut prefill_at, mut prefillers) = (Vec::new(), Vec::new());
        for (at, entry) in routes.instances.iter().enumerate() {
            if excluded(entry) {
                continue;
            }
            let candidate = entry.candidate(scores.get(entry.handle));
            if entry.role.decodes() {
                decode_at.push(at);
                decoders.push(candidate);
            } else {
                prefill_at.push(at);
                prefillers.push(candidate);
            }
        }
        let chosen = policy.select(&decoders, &info).filter(|&c| c < decoders.len())?;
        let decode_overlap = decoders[chosen].overlap_blocks;
        let decode_at = decode_at[chosen];

        let blocks = prompt_blocks(request);
        let cached_tokens = (decode_overlap as usize).saturating_mul(request.block_size);
        let uncached = request.prompt_tokens.saturating_sub(cached_tokens);
        let place = if request.allow_remote_prefill {
            disagg.place(uncached, prefillers.iter().map(Candidate::requests))
        } else {
            PrefillPlace::Local(LocalReason::NotAllowed)
        };
        let mut prefill = None;
        let place = match place {
            PrefillPlace::Remote => {
                // Those over the queue limit are out (rarely any: `place` saw one under it).
                if prefillers.iter().any(|c| !disagg.accepts(c.requests())) {
                    let keep: Vec<bool> =
                        prefillers.iter().map(|c| disagg.accepts(c.requests())).collect();
                    let mut kept = keep.iter();
                    prefill_at.retain(|_| kept.next().copied().unwrap_or(false));
                    let mut kept = keep.iter();
                    prefillers.retain(|_| kept.next().copied().unwrap_or(false));
                }
                match policy.select(&prefillers, &info).filter(|&c| c < prefillers.len()) {
                    Some(c) => {
                        let overlap_blocks = prefillers[c].overlap_blocks;
                        let at = prefill_at[c];
                        drop((decoders, prefillers));
                        let booking = routes.book(at, blocks, request.block_hashes, now, ttl);
                        prefill = Some(PrefillChoice { booking, overlap_blocks });
                        PrefillPlace::Remote
                    }
                    None => PrefillPlace::Local(LocalReason::PrefillQueuesFull),
                }
            }
            local => local,
        };
        let decode = routes.book(decode_at, blocks, request.block_hashes, now, ttl);
        Some(Selection { decode, decode_overlap_blocks: decode_overlap, place, prefill })
    }

    /// Gives back what [`RoutingState::select`] booked. The instance's last load report is
    /// lowered by the same amount too: it lags by up to the instance's report interval and
    /// may still count the request that just ended; its next report corrects the guess.
    pub fn release(&mut self, booking: &Booking) {
        let Some((routes, at)) = self.routes_of(&booking.instance) else {
            return;
        };
        let entry = &mut routes.instances[at];
        entry.booked_blocks = entry.booked_blocks.saturating_sub(booking.blocks);
        entry.booked_requests = entry.booked_requests.saturating_sub(1);
        if let Some(load) = &mut entry.load {
            load.active_kv_blocks = load.active_kv_blocks.saturating_sub(booking.blocks);
            load.active_requests = load.active_requests.saturating_sub(1);
        }
    }

    /// Blocks this router has booked on `instance` and not released.
    pub fn booked_blocks(&self, instance: &str) -> u64 {
        self.entry(instance).map_or(0, |e| e.booked_blocks)
    }

    /// Requests this router has booked on `instance` and not released.
    pub fn booked_requests(&self, instance: &str) -> u32 {
        self.entry(instance).map_or(0, |e| e.booked_requests)
    }

    /// Live instances of each model, in the KV index.
    pub fn indexed_instances(&self) -> impl Iterator<Item = (&str, usize)> {
        self.models.iter().map(|(model, routes)| (&**model, routes.index.instances()))
    }

    /// The KV index of `model`, for inspection.
    pub fn index(&self, model: &str) -> Option<&KvIndex> {
        self.models.get(model).map(|routes| &routes.index)
    }

    fn entry(&self, instance: &str) -> Option<&Entry> {
        let model = self.owners.get(instance)?;
        let routes = self.models.get(model)?;
        routes.positions.get(instance).map(|&at| &routes.instances[at])
    }

    fn routes_of(&mut self, instance: &str) -> Option<(&mut ModelRoutes, usize)> {
        let model = self.owners.get(instance)?;
        let routes = self.models.get_mut(model)?;
        let at = *routes.positions.get(instance)?;
        Some((routes, at))
    }
}

impl ModelRoutes {
    fn remove(&mut self, name: &str) {
        let Some(at) = self.positions.remove(name) else {
            return;
        };
        let entry = self.instances.swap_remove(at);
        self.index.remove_instance(entry.handle);
        if let Some(moved) = self.instances.get(at) {
            self.positions.insert(moved.name.clone(), at);
        }
    }

    /// Books `blocks` and one request on the instance at `at`, and records the decision for
    /// an instance that sends no KV events.
    fn book(
        &mut self,
        at: usize,
        blocks: u64,
        hashes: &[u64],
        now: Duration,
        ttl: Duration,
    ) -> Booking {
        let entry = &mut self.instances[at];
        entry.booked_blocks = entry.booked_blocks.saturating_add(blocks);
        entry.booked_requests = entry.booked_requests.saturating_add(1);
        // Errors only for a stale handle, which an entry never holds.
        let _ = self.index.record_decision(entry.handle, hashes, now, ttl);
        Booking { instance: entry.name.clone(), blocks }
    }
}

/// KV blocks a prompt occupies, the partial last block included.
fn prompt_blocks(request: &RouteRequest<'_>) -> u64 {
    let blocks = if request.block_size > 0 {
        request.prompt_tokens.div_ceil(request.block_size)
    } else {
        request.block_hashes.len()
    };
    u64::try_from(blocks).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
