//! What the bench asks a server before it runs, as bench_serving does: that it is ready
//! (`--ready-check-timeout-sec`), which models it serves, where their tokenizer is, and what it
//! says about itself (`server_info`).
//!
//! The tokenizer is looked for, in order, in the model's `root` on `/v1/models` (a Switchyard
//! frontend puts its workers' tokenizer source there, vLLM its model path), SGLang's
//! `/model_info` (`tokenizer_path`, `model_path`), then the model id itself (a directory or
//! a repo id in the local Hugging Face cache). When none loads, the embedded tokenizer is used
//! with a warning: prompt lengths are then only approximately what the server counts.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::client::HttpClient;
use crate::{Error, TokenCounter};

/// One GET may take this long.
const GET_TIMEOUT: Duration = Duration::from_secs(10);

/// What the server said before the run.
#[derive(Debug, Clone, Default)]
pub struct ServerFacts {
    /// `data` of `/v1/models`.
    pub models: Vec<Value>,
    /// SGLang's `/model_info`.
    pub model_info: Option<Value>,
    /// SGLang's `/server_info`.
    pub server_info: Option<Value>,
    /// A Switchyard frontend's `/health` (live instances per model).
    pub health: Option<Value>,
}

/// The tokenizer a run uses and how it was chosen.
#[derive(Debug, Clone)]
pub struct TokenizerChoice {
    pub tokenizer: TokenCounter,
    /// Set when none of the server's hints loaded and the embedded tokenizer stands in.
    pub warning: Option<String>,
}

/// Polls `/v1/models` until it answers 200, for at most `timeout` (0: not at all).
pub(crate) async fn wait_ready(client: &HttpClient, timeout: Duration) -> Result<(), Error> {
    if timeout.is_zero() {
        return Ok(());
    }
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.get("/v1/models", left.min(GET_TIMEOUT)).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(Error::Server(format!(
                    "the server was not ready within {timeout:?} (--ready-check-timeout-sec): {e}"
                )));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200).min(left)).await,
        }
    }
}

/// Asks the server what it serves; endpoints it lacks are simply absent.
pub(crate) async fn probe(client: &HttpClient) -> Result<ServerFacts, Error> {
    let models = client.get_json("/v1/models", GET_TIMEOUT).await?;
    let models = models["data"].as_array().cloned().unwrap_or_default();
    Ok(ServerFacts {
        models,
        model_info: client.get_json("/model_info", GET_TIMEOUT).await.ok(),
        server_info: client.get_json("/server_info", GET_TIMEOUT).await.ok(),
        health: client.get_json("/health", GET_TIMEOUT).await.ok().filter(|h| h.is_object()),
    })
}

impl ServerFacts {
    /// The first model the server lists (bench_serving's default `--model`).
    pub fn first_model(&self) -> Option<String> {
        self.models.first()?["id"].as_str().map(str::to_owned)
    }

    /// Where `model`'s tokenizer may be, best first, each with where the hint came from.
    pub fn tokenizer_hints(&self, model: &str) -> Vec<(String, String)> {
        let mut hints: Vec<(String, String)> = Vec::new();
        let mut add = |source: Option<&str>, from: &str| {
            if let Some(source) = source.filter(|s| !s.is_empty())
                && !hints.iter().any(|(s, _)| s == source)
            {
                hints.push((source.to_owned(), from.to_owned()));
            }
        };
        let entry = self.models.iter().find(|m| m["id"] == model);
        add(entry.and_then(|m| m["root"].as_str()), "the root of /v1/models");
        if let Some(info) = &self.model_info {
            add(info["tokenizer_path"].as_str(), "tokenizer_path of /model_info");
            add(info["model_path"].as_str(), "model_path of /model_info");
        }
        add(Some(model), "the model id");
        hints
    }

    /// What the result line keeps as `server_info`: SGLang's own when it has one, else what
    /// the other endpoints said.
    pub fn server_info(&self) -> Value {
        if let Some(info) = &self.server_info {
            return info.clone();
        }
        json!({ "models": self.models, "health": self.health })
    }
}

/// Loads the first hint that loads; else the embedded tokenizer, with the warning to show.
pub fn choose_tokenizer(hints: &[(String, String)]) -> Result<TokenizerChoice, Error> {
    let mut tried = Vec::new();
    for (source, from) in hints {
        match TokenCounter::load(source) {
            Ok(tokenizer) => return Ok(TokenizerChoice { tokenizer, warning: None }),
            Err(e) => tried.push(format!("{source:?} ({from}): {e}")),
        }
    }
    let fallback = switchyard_model::DEFAULT_SOURCE;
    let warning = format!(
        "WARNING: the server's tokenizer could not be loaded, so prompts are measured with the \
         embedded {fallback} tokenizer and their lengths differ from what the server counts; \
         give --tokenizer (a tokenizer.json, a model directory or a repo id in the local \
         Hugging Face cache). Tried: {}",
        if tried.is_empty() { "nothing".to_owned() } else { tried.join("; ") }
    );
    Ok(TokenizerChoice { tokenizer: TokenCounter::load(fallback)?, warning: Some(warning) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_come_in_order_without_repeats_and_a_miss_falls_back_loudly() {
        let facts = ServerFacts {
            models: vec![json!({"id": "m", "root": "builtin:tiny"}), json!({"id": "n"})],
            model_info: Some(json!({"model_path": "org/model", "tokenizer_path": "org/model"})),
            ..ServerFacts::default()
        };
        let hints = facts.tokenizer_hints("m");
        let sources: Vec<&str> = hints.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(sources, ["builtin:tiny", "org/model", "m"]);
        assert!(choose_tokenizer(&hints).unwrap().warning.is_none());

        let missing = [("/nonexistent/model".to_owned(), "the model id".to_owned())];
        let choice = choose_tokenizer(&missing).unwrap();
        let warning = choice.warning.unwrap();
        assert!(warning.starts_with("WARNING:") && warning.contains("/nonexistent/model"));
        assert_eq!(choice.tokenizer.source(), "builtin:tiny");
        assert_eq!(facts.server_info()["models"][1]["id"], "n");
    }
}
