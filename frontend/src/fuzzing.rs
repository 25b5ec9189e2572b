//! The request parsing a client's body goes through before routing — JSON into the OpenAI
//! request types, parameter validation, the chat template, tokenization — as one call, for
//! the fuzz targets in `fuzz/`. Not part of the API.

use crate::error::Error;
use crate::handlers::chat::parse_chat;
use crate::handlers::completions::parse_completion;
use crate::preprocess::Preprocessor;

/// The endpoint whose parsing to run.
#[derive(Debug, Clone, Copy)]
pub enum Endpoint {
    Chat,
    Completions,
}

/// The embedded model's preprocessor, loaded once.
pub struct Harness {
    preprocessor: Preprocessor,
}

impl Default for Harness {
    fn default() -> Self {
        Harness::new()
    }
}

impl Harness {
    pub fn new() -> Harness {
        let preprocessor = Preprocessor::load(switchyard_model::DEFAULT_SOURCE)
            .unwrap_or_else(|e| panic!("the embedded model loads: {e}"));
        Harness { preprocessor }
    }

    /// Parses `body` as `endpoint` does: the prompt's token ids, or the HTTP status and
    /// message the client would get. A 5xx for a client's body is a bug: this panics then.
    pub fn run(&self, endpoint: Endpoint, body: &[u8]) -> Result<Vec<u32>, (u16, String)> {
        let result = match endpoint {
            Endpoint::Chat => self.chat(body),
            Endpoint::Completions => self.completion(body),
        };
        result.map_err(|e| {
            let status = e.status().as_u16();
            assert!(status < 500, "a client's body gave {status}: {e}");
            (status, e.to_string())
        })
    }

    fn chat(&self, body: &[u8]) -> Result<Vec<u32>, Error> {
        let (request, _) = parse_chat(body)?;
        let prompt = self.preprocessor.render_chat(&request.chat_input())?;
        self.preprocessor.encode_prompt(&prompt)
    }

    fn completion(&self, body: &[u8]) -> Result<Vec<u32>, Error> {
        let (_, _, prompt) = parse_completion(body)?;
        self.preprocessor.prompt_ids(prompt, "prompt")
    }
}
