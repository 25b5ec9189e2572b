//! Which engine server sits behind the URL, and the few things that differ between them: how a
//! prompt is sent (token ids or text), whether generated token ids come back, which endpoint
//! streams them, and what its Prometheus metrics are called.

use std::fmt;
use std::str::FromStr;

/// An OpenAI-compatible engine server, by make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavour {
    /// Any server speaking OpenAI's `/v1/completions`: text in, text out.
    Openai,
    /// vLLM's OpenAI server: token ids in and out (`return_token_ids`).
    Vllm,
    /// SGLang's native `/generate`: `input_ids` in, `output_ids` out.
    Sglang,
    /// TensorRT-LLM's `trtllm-serve`: token ids in, text out.
    Trtllm,
    /// llama.cpp's `llama-server`, native `/completion`: token ids in and out
    /// (`return_tokens`).
    Llamacpp,
}

impl Flavour {
    pub const ALL: [Flavour; 5] =
        [Flavour::Openai, Flavour::Vllm, Flavour::Sglang, Flavour::Trtllm, Flavour::Llamacpp];

    /// The name on the command line and in the model card's `engine`.
    pub fn name(self) -> &'static str {
        match self {
            Flavour::Openai => "openai",
            Flavour::Vllm => "vllm",
            Flavour::Sglang => "sglang",
            Flavour::Trtllm => "trtllm",
            Flavour::Llamacpp => "llamacpp",
        }
    }

    /// The make a server's `/v1/models` names in `owned_by`.
    pub fn from_owned_by(owned_by: &str) -> Option<Flavour> {
        match owned_by.to_ascii_lowercase().as_str() {
            "vllm" => Some(Flavour::Vllm),
            "sglang" => Some(Flavour::Sglang),
            "llamacpp" | "llama.cpp" => Some(Flavour::Llamacpp),
            "tensorrt_llm" | "tensorrt-llm" | "trtllm" => Some(Flavour::Trtllm),
            _ => None,
        }
    }

    /// Whether generated token ids come back from the engine (else its text is tokenized).
    pub fn returns_token_ids(self) -> bool {
        matches!(self, Flavour::Vllm | Flavour::Sglang | Flavour::Llamacpp)
    }

    /// Whether the prompt goes as token ids (else as the text they decode to).
    pub fn takes_token_ids(self) -> bool {
        !matches!(self, Flavour::Openai)
    }
}

impl fmt::Display for Flavour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Flavour {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Flavour::ALL.into_iter().find(|f| f.name() == s).ok_or_else(|| {
            format!("unknown engine `{s}`; one of {}", Flavour::ALL.map(Flavour::name).join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_makes_are_recognised() {
        for f in Flavour::ALL {
            assert_eq!(f.name().parse::<Flavour>(), Ok(f));
        }
        assert_eq!(Flavour::from_owned_by("vllm"), Some(Flavour::Vllm));
        assert_eq!(Flavour::from_owned_by("llamacpp"), Some(Flavour::Llamacpp));
        assert_eq!(Flavour::from_owned_by("openai"), None);
        assert!("tgi".parse::<Flavour>().is_err());
    }
}
