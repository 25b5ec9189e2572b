//! Response bodies and stream chunks in OpenAI's shapes. They borrow what they show, so a chunk
//! is serialized straight from the request's state into the outgoing bytes.

use serde::Serialize;

/// Token counts of one request.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub(crate) struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    pub prompt_tokens_details: PromptTokensDetails,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub(crate) struct PromptTokensDetails {
    pub cached_tokens: u32,
}

impl Usage {
    pub fn new(prompt_tokens: u32, completion_tokens: u32, cached_tokens: u32) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
            prompt_tokens_details: PromptTokensDetails { cached_tokens },
        }
    }
}

/// What every response of one request shares.
#[derive(Debug, Clone)]
pub(crate) struct ResponseMeta {
    /// `chatcmpl-…` or `cmpl-…`.
    pub id: String,
    /// The model name as the client gave it.
    pub model: String,
    /// Unix seconds at which the request was accepted.
    pub created: u64,
}

/// `chat.completion`.
#[derive(Serialize)]
pub(crate) struct ChatCompletion<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: [ChatChoice<'a>; 1],
    pub usage: Usage,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nvext: Option<&'a Nvext>,
}

#[derive(Serialize)]
pub(crate) struct ChatChoice<'a> {
    pub index: u32,
    pub message: AssistantMessage<'a>,
    pub logprobs: Option<serde_json::Value>,
    pub finish_reason: &'static str,
}

#[derive(Serialize)]
pub(crate) struct AssistantMessage<'a> {
    pub role: &'static str,
    pub content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub tool_calls: &'a [ToolCallOut<'a>],
}

/// One tool call, whole (`message.tool_calls[i]`) or as a stream delta (with `index`).
#[derive(Serialize)]
pub(crate) struct ToolCallOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    pub id: &'a str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCallOut<'a>,
}

#[derive(Serialize)]
pub(crate) struct FunctionCallOut<'a> {
    pub name: &'a str,
    pub arguments: &'a str,
}

/// The opt-in timing extension (`"nvext": {"timing": true}` in the request): where the
/// request ran and where its time went, for benchmark attribution.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Nvext {
    /// The instance that served the request.
    pub worker_id: String,
    /// Prompt tokens the worker found in its prefix cache.
    pub cached_tokens: u32,
    pub timing: NvextTiming,
}

/// Milliseconds, as the frontend saw them.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct NvextTiming {
    /// From the request's arrival to its dispatch: parsing, templating, tokenizing, routing.
    pub queue_ms: f64,
    /// From dispatch to the first token: the engine's own queue and the prefill.
    pub prefill_ms: f64,
    /// From the first token to the last.
    pub decode_ms: f64,
    pub total_ms: f64,
}

/// `chat.completion.chunk`.
#[derive(Serialize)]
pub(crate) struct ChatCompletionChunk<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: &'a [ChatChunkChoice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nvext: Option<&'a Nvext>,
}

#[derive(Serialize)]
pub(crate) struct ChatChunkChoice<'a> {
    pub index: u32,
    pub delta: ChatDelta<'a>,
    pub logprobs: Option<serde_json::Value>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
pub(crate) struct ChatDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub tool_calls: &'a [ToolCallOut<'a>],
}

/// `text_completion`, whole or as a stream chunk (the shape is the same).
#[derive(Serialize)]
pub(crate) struct Completion<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: &'a [CompletionChoice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nvext: Option<&'a Nvext>,
}

#[derive(Serialize)]
pub(crate) struct CompletionChoice<'a> {
    pub index: u32,
    pub text: &'a str,
    pub logprobs: Option<serde_json::Value>,
    pub finish_reason: Option<&'static str>,
}

/// `GET /v1/models`.
#[derive(Serialize)]
pub(crate) struct ModelList<'a> {
    pub object: &'static str,
    pub data: Vec<ModelObject<'a>>,
}

#[derive(Serialize)]
pub(crate) struct ModelObject<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    /// Where the model's tokenizer comes from (its cards' tokenizer source), under vLLM's name
    /// for it, so clients such as load generators can measure prompts as the server does.
    pub root: &'a str,
    /// The context length, under vLLM's name, when the cards state one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<u32>,
}
