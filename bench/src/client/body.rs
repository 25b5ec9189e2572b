//! Request bodies, as bench_serving sends them: greedy sampling (or `--temperature`/`--top-p`),
//! `max_tokens` from the dataset, `ignore_eos` unless disabled, usage always asked for, a LoRA
//! adapter's name as the model when `--lora-name` is given, then `--extra-request-body` on top.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::Error;
use crate::config::{Endpoint, RunConfig};
use crate::dataset::{Message, Prompt};

/// The bytes of one request; `lora` names the adapter it asks for, if any.
pub(crate) fn build(
    config: &RunConfig,
    prompt: &Prompt,
    max_tokens: u32,
    lora: Option<&str>,
) -> Result<Bytes, Error> {
    let mut body = Map::new();
    body.insert("model".into(), json!(lora.unwrap_or(&config.model)));
    if let Some(lora) = lora {
        // SGLang reads the adapter from `lora_path`, vLLM from `model`.
        body.insert("lora_path".into(), json!(lora));
    }
    match (config.backend.endpoint, prompt) {
        (Endpoint::Completions, Prompt::Text(text)) => {
            body.insert("prompt".into(), json!(text));
        }
        (Endpoint::Chat, Prompt::Text(text)) => {
            body.insert("messages".into(), json!([{"role": "user", "content": text}]));
        }
        (Endpoint::Chat, Prompt::Messages(messages)) => {
            body.insert("messages".into(), json!(messages));
        }
        (Endpoint::Completions, Prompt::Messages(_)) => {
            return Err(Error::Config(format!(
                "the dataset has chat messages; backend {} sends text prompts (use a -chat backend)",
                config.backend.name
            )));
        }
    }
    body.insert("max_tokens".into(), json!(max_tokens));
    let sampling = &config.sampling;
    body.insert("temperature".into(), json!(sampling.temperature));
    if sampling.top_p < 1.0 {
        body.insert("top_p".into(), json!(sampling.top_p));
    }
    if let Some(top) = sampling.logprobs {
        match config.backend.endpoint {
            Endpoint::Completions => {
                body.insert("logprobs".into(), json!(top));
            }
            Endpoint::Chat => {
                body.insert("logprobs".into(), json!(true));
                body.insert("top_logprobs".into(), json!(top));
            }
        }
    }
    body.insert("stream".into(), json!(config.stream));
    if config.stream {
        // Output tokens are taken from the server's count, never guessed from chunks.
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if config.ignore_eos {
        body.insert("ignore_eos".into(), json!(true));
    }
    for (key, value) in &config.extra_request_body {
        body.insert(key.clone(), value.clone());
    }
    serde_json::to_vec(&Value::Object(body))
        .map(Bytes::from)
        .map_err(|e| Error::Config(format!("cannot encode a request: {e}")))
}

/// The prompt of turn `k` of a conversation: every earlier user turn followed by the server's
/// reply to it, then the new user turn.
pub(crate) fn with_history(
    endpoint: Endpoint,
    history: &[(String, String)],
    new_turn: &str,
) -> Prompt {
    match endpoint {
        Endpoint::Chat => {
            let mut messages = Vec::with_capacity(history.len() * 2 + 1);
            for (user, reply) in history {
                messages.push(Message { role: "user".into(), content: user.clone() });
                messages.push(Message { role: "assistant".into(), content: reply.clone() });
            }
            messages.push(Message { role: "user".into(), content: new_turn.to_owned() });
            Prompt::Messages(messages)
        }
        Endpoint::Completions => {
            let mut text = String::new();
            for (user, reply) in history {
                text.push_str(user);
                text.push_str(reply);
            }
            text.push_str(new_turn);
            Prompt::Text(text)
        }
    }
}
