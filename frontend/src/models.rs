//! The models the frontend serves, rebuilt from discovery whenever the live instances change:
//! per model its routable instances (each with the frontend's in-flight counter), its limits
//! from the instances' cards, its metric handles and its shared preprocessor, which starts
//! loading in the background as soon as the model appears.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use switchyard_proto::{InstanceRecord, Role};
use switchyard_runtime::discovery::{InstanceWatch, Instances};
use tokio::sync::{OnceCell, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Gate;
use crate::error::Error;
use crate::metrics::{ModelMetrics, instance_requests_counter};
use crate::parsers::ParserConfig;
use crate::preprocess::Preprocessor;

/// After a failed load, requests get the same error for this long before loading is retried,
/// so a broken model directory is not re-read by every request.
const LOAD_RETRY_AFTER: Duration = Duration::from_secs(5);

/// One live instance a request may be sent to.
#[derive(Debug, Clone)]
pub(crate) struct RoutedInstance {
    pub record: Arc<InstanceRecord>,
    /// Requests it accepted from this frontend (`instance_requests_total`).
    pub requests: metrics::Counter,
}

/// What the frontend knows of one model.
#[derive(Debug)]
pub(crate) struct ModelEntry {
    pub name: String,
    /// Unix seconds when this frontend first saw the model.
    pub created: u64,
    /// Instances that take whole requests (aggregated and decode roles).
    pub instances: Vec<RoutedInstance>,
    /// Instances with the prefill role: they compute prompts for decode instances.
    pub prefill_instances: Vec<RoutedInstance>,
    /// Where each instance id is: (prefill?, position in its list).
    positions: HashMap<String, (bool, usize)>,
    /// All live instances, whatever their role; 0 for a model whose instances all left (it
    /// stays known, so its requests get 503 rather than 404).
    pub live_instances: usize,
    /// The smallest context length the cards state, if any does.
    pub context_length: Option<u32>,
    /// KV block size of the instances' cards (0: send no block hashes).
    pub kv_block_size: usize,
    pub preprocessor: Arc<PreprocessorSlot>,
    pub metrics: Arc<ModelMetrics>,
    /// Output parsers the instances' cards name.
    pub parsers: ParserConfig,
    /// Every live instance's engine constrains output to a JSON schema.
    pub structured_output: bool,
    /// The model's places under admission control (kept across table rebuilds).
    pub gate: Arc<Gate>,
}

/// A snapshot of every model, swapped whole on each discovery change.
#[derive(Debug, Default)]
pub(crate) struct ModelTable {
    models: BTreeMap<String, Arc<ModelEntry>>,
}

impl ModelEntry {
    /// Every live instance, decode-capable ones first.
    pub fn all_instances(&self) -> impl Iterator<Item = &RoutedInstance> {
        self.instances.iter().chain(&self.prefill_instances)
    }

    /// The instance with this id.
    pub fn instance(&self, id: &str) -> Option<&RoutedInstance> {
        match *self.positions.get(id)? {
            (false, at) => self.instances.get(at),
            (true, at) => self.prefill_instances.get(at),
        }
    }
}

impl ModelTable {
    pub fn get(&self, model: &str) -> Option<&Arc<ModelEntry>> {
        self.models.get(model)
    }

    /// Models sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<ModelEntry>> {
        self.models.values()
    }
}

/// The preprocessor of one tokenizer source, loaded once and shared.
#[derive(Debug)]
pub(crate) struct PreprocessorSlot {
    source: String,
    loaded: OnceCell<Arc<Preprocessor>>,
    /// The last failure and when it happened.
    failure: Mutex<Option<(Instant, String)>>,
}

impl PreprocessorSlot {
    fn new(source: String) -> PreprocessorSlot {
        PreprocessorSlot { source, loaded: OnceCell::new(), failure: Mutex::new(None) }
    }

    /// Where the tokenizer and chat template come from (the instances' card).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Why loading failed, while the failure stands (cleared by a successful load).
    pub fn failure(&self) -> Option<String> {
        if self.loaded.get().is_some() {
            return None;
        }
        self.failure.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map(|(_, r)| r.clone())
    }

    /// The loaded preprocessor; the first caller loads it on a blocking thread and the others
    /// wait for that load.
    pub async fn get(&self) -> Result<Arc<Preprocessor>, Error> {
        if let Some(loaded) = self.loaded.get() {
            return Ok(loaded.clone());
        }
        if let Some((at, reason)) = &*self.failure.lock().unwrap_or_else(PoisonError::into_inner)
            && at.elapsed() < LOAD_RETRY_AFTER
        {
            return Err(Error::ModelLoad {
                source_name: self.source.clone(),
                reason: reason.clone(),
            });
        }
        let result = self
            .loaded
            .get_or_try_init(|| async {
                let source = self.source.clone();
                let started = Instant::now();
                let loaded = tokio::task::spawn_blocking(move || Preprocessor::load(&source))
                    .await
                    .map_err(|e| Error::Internal(format!("model loading task failed: {e}")))??;
                tracing::info!(source = %self.source, elapsed = ?started.elapsed(), "model tokenizer and template loaded");
                Ok::<_, Error>(Arc::new(loaded))
            })
            .await
            .cloned();
        if let Err(e) = &result {
            tracing::error!(source = %self.source, error = %e, "cannot load model files");
            *self.failure.lock().unwrap_or_else(PoisonError::into_inner) =
                Some((Instant::now(), e.to_string()));
        }
        result
    }
}

/// The current [`ModelTable`], kept up to date by a background task.
#[derive(Debug, Clone)]
pub(crate) struct ModelRegistry {
    table: watch::Receiver<Arc<ModelTable>>,
}

impl ModelRegistry {
    /// Builds the table from the watch's current instances, then follows it until `shutdown`.
    pub fn start(
        instances: InstanceWatch,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> ModelRegistry {
        let mut builder = TableBuilder { tasks: tasks.clone(), ..TableBuilder::default() };
        let mut changes = instances.subscribe();
        let snapshot = changes.borrow_and_update().clone();
        let first = builder.build(&snapshot);
        let (tx, rx) = watch::channel(Arc::new(first));
        tasks.spawn(async move {
            // Keeps the watch (and so its follower's channel) alive as long as this task.
            let _instances = instances;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    changed = changes.changed() => if changed.is_err() { return },
                }
                let snapshot = changes.borrow_and_update().clone();
                tx.send_replace(Arc::new(builder.build(&snapshot)));
            }
        });
        ModelRegistry { table: rx }
    }

    /// The latest table: one lock-free read and an `Arc` clone.
    /// The table and its later versions.
    pub fn changes(&self) -> watch::Receiver<Arc<ModelTable>> {
        self.table.clone()
    }

    pub fn table(&self) -> Arc<ModelTable> {
        self.table.borrow().clone()
    }
}

fn position_map(
    instances: &[RoutedInstance],
    prefill: &[RoutedInstance],
) -> HashMap<String, (bool, usize)> {
    let decoders = instances.iter().enumerate().map(|(at, i)| (false, at, i));
    let prefillers = prefill.iter().enumerate().map(|(at, i)| (true, at, i));
    decoders
        .chain(prefillers)
        .map(|(is_prefill, at, i)| (i.record.instance_id.clone(), (is_prefill, at)))
        .collect()
}

/// State carried from one table to the next.
#[derive(Default)]
struct TableBuilder {
    tasks: TaskTracker,
    /// Per instance id: its request counter.
    counters: HashMap<String, metrics::Counter>,
    slots: HashMap<String, Arc<PreprocessorSlot>>,
    metrics: HashMap<String, Arc<ModelMetrics>>,
    gates: HashMap<String, Arc<Gate>>,
    first_seen: HashMap<String, u64>,
    /// The last table's models: a model whose instances all left stays known (503, not 404).
    previous: BTreeMap<String, Arc<ModelEntry>>,
}

impl TableBuilder {
    fn build(&mut self, instances: &Instances) -> ModelTable {
        let mut models = BTreeMap::new();
        let mut counters = HashMap::with_capacity(self.counters.len());
        let mut slots = HashMap::with_capacity(self.slots.len());
        for (name, records) in instances.models() {
            if name.is_empty() {
                // A record without a model card cannot be served; discovery logs it.
                continue;
            }
            let cards = || records.iter().filter_map(|r| r.card.as_ref());
            // A card without a tokenizer source: the model name may itself be an HF repo id.
            let source = cards()
                .map(|c| c.tokenizer_source.as_str())
                .find(|s| !s.is_empty())
                .unwrap_or(name)
                .to_owned();
            let slot = self.slot(&source);
            slots.insert(source, slot.clone());
            let mut routed = |prefill: bool| -> Vec<RoutedInstance> {
                records
                    .iter()
                    .filter(|r| (r.role() == Role::Prefill) == prefill)
                    .map(|r| {
                        let requests = self
                            .counters
                            .get(&r.instance_id)
                            .cloned()
                            .unwrap_or_else(|| instance_requests_counter(name, &r.instance_id));
                        counters.insert(r.instance_id.clone(), requests.clone());
                        RoutedInstance { record: r.clone(), requests }
                    })
                    .collect()
            };
            let instances = routed(false);
            let prefill_instances = routed(true);
            let positions = position_map(&instances, &prefill_instances);
            let block_sizes = || cards().map(|c| c.kv_block_size).filter(|&b| b > 0);
            let kv_block_size = block_sizes().next().unwrap_or(0);
            if block_sizes().any(|b| b != kv_block_size) {
                tracing::warn!(
                    model = name,
                    "instances disagree on the KV block size; using {kv_block_size}"
                );
            }
            let parsers = cards()
                .next()
                .map(|c| ParserConfig::from_names(&c.reasoning_parser, &c.tool_call_parser))
                .unwrap_or_default();
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let entry = ModelEntry {
                name: name.to_owned(),
                created: *self.first_seen.entry(name.to_owned()).or_insert(now),
                live_instances: records.len(),
                context_length: cards().map(|c| c.context_length).filter(|&c| c > 0).min(),
                kv_block_size: kv_block_size as usize,
                preprocessor: slot,
                prefill_instances,
                positions,
                metrics: self
                    .metrics
                    .entry(name.to_owned())
                    .or_insert_with(|| Arc::new(ModelMetrics::new(name)))
                    .clone(),
                instances,
                parsers,
                structured_output: records
                    .iter()
                    .all(|r| r.card.as_ref().is_some_and(|c| c.structured_output)),
                gate: self.gates.entry(name.to_owned()).or_default().clone(),
            };
            models.insert(name.to_owned(), Arc::new(entry));
        }
        for (name, gone) in &self.previous {
            if !models.contains_key(name) {
                slots.insert(gone.preprocessor.source.clone(), gone.preprocessor.clone());
                let entry = ModelEntry {
                    name: name.clone(),
                    created: gone.created,
                    instances: Vec::new(),
                    prefill_instances: Vec::new(),
                    positions: HashMap::new(),
                    live_instances: 0,
                    context_length: gone.context_length,
                    kv_block_size: gone.kv_block_size,
                    preprocessor: gone.preprocessor.clone(),
                    metrics: gone.metrics.clone(),
                    parsers: gone.parsers,
                    structured_output: false,
                    gate: gone.gate.clone(),
                };
                models.insert(name.clone(), Arc::new(entry));
            }
        }
        self.counters = counters;
        self.slots = slots;
        self.previous = models.clone();
        ModelTable { models }
    }

    /// The slot of `source`, created (and its loading started) when new.
    fn slot(&mut self, source: &str) -> Arc<PreprocessorSlot> {
        if let Some(slot) = self.slots.get(source) {
            return slot.clone();
        }
        let slot = Arc::new(PreprocessorSlot::new(source.to_owned()));
        let warming = slot.clone();
        self.tasks.spawn(async move {
            // Errors are logged by `get`; requests will see them too.
            let _ = warming.get().await;
        });
        self.slots.insert(source.to_owned(), slot.clone());
        slot
    }
}
