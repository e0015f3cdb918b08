//! What callers send a model replica and what it answers, over [`ReplicaMsg::Model`].
//!
//! ractor_cluster cannot carry an actor reference (or a stream) inside a message, so tokens
//! are not pushed to the caller: the caller starts a generation, then long-polls for the
//! tokens made since its last poll. Every type here crosses the network as bincode, so fields
//! are never reordered or removed, and `skip_serializing_if` is never used.
//!
//! [`ReplicaMsg::Model`]: crate::replica::ReplicaMsg::Model

use arbor_kernels::llama::{FinishReason, GenerateParams, Message, Sampling};
use serde::{Deserialize, Serialize};

/// The most tokens one generation may ask for. SmolLM2's context is 8192 tokens; a bound
/// keeps one caller from holding a batch slot for minutes.
pub const MAX_GENERATE_TOKENS: u32 = 2048;
/// The longest prompt (or all messages together) accepted, in bytes.
pub const MAX_PROMPT_BYTES: usize = 64 * 1024;
/// The most messages one conversation may have.
pub const MAX_MESSAGES: usize = 256;
/// The most stop strings, and the longest one, in bytes.
pub const MAX_STOPS: usize = 16;
pub const MAX_STOP_BYTES: usize = 256;
/// The longest a poll waits; a longer `wait_ms` is cut to this, so a poll never outlives
/// the caller's RPC timeout by surprise.
pub const MAX_POLL_WAIT_MS: u32 = 30_000;

/// A request to a model replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ModelRequest {
    /// Starts a generation; answered at once with its id.
    Generate(GenerateSpec),
    /// Tokens from position `from` on; waits up to `wait_ms` for at least one new token (or the end).
    Poll {
        id: u64,
        from: u32,
        wait_ms: u32,
    },
    Cancel {
        id: u64,
    },
}

/// Who wrote a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatRole {
    System,
    User,
    Assistant,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    pub role: ChatRole,
    pub content: String,
}

/// What to generate: a raw `prompt` or chat `messages` (exactly one of them), and how.
///
/// The serde defaults only matter for JSON (the generic `Call`): bincode always carries
/// every field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateSpec {
    /// Raw text, special tokens included as written.
    #[serde(default)]
    pub prompt: Option<String>,
    /// A conversation, rendered with the model's chat template.
    #[serde(default)]
    pub messages: Vec<ChatMessage>,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// `None` or `0` means greedy decoding; otherwise top-p sampling at this temperature.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus size in (0, 1]; `1` when only a temperature is given.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Seed of the sampler; a random one when absent.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Generation ends before the first of these; it is not part of the answer.
    #[serde(default)]
    pub stop: Vec<String>,
}

fn default_max_tokens() -> u32 {
    256
}

impl GenerateSpec {
    /// Greedy decoding of `prompt`, at most `max_tokens` tokens.
    pub fn prompt(prompt: impl Into<String>, max_tokens: u32) -> Self {
        GenerateSpec {
            prompt: Some(prompt.into()),
            messages: Vec::new(),
            max_tokens,
            temperature: None,
            top_p: None,
            seed: None,
            stop: Vec::new(),
        }
    }

    /// Greedy decoding of the answer to `messages`, at most `max_tokens` tokens.
    pub fn chat(messages: Vec<ChatMessage>, max_tokens: u32) -> Self {
        GenerateSpec {
            prompt: None,
            messages,
            ..GenerateSpec::prompt("", max_tokens)
        }
    }
}

/// What a model replica answers to a [`ModelRequest`].
pub type ModelReply = Result<ModelAnswer, ModelFailure>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ModelAnswer {
    Started {
        id: u64,
    },
    /// The texts of the tokens at positions `from..next` (one text per token, possibly empty
    /// while text is held back for a stop string or an unfinished character), and, once the
    /// generation is over and `next` is its last position, why it ended.
    Tokens {
        texts: Vec<String>,
        next: u32,
        finished: Option<Finished>,
    },
    Cancelled,
}

/// How a generation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finished {
    /// `eos`, `stop`, `max_tokens`, `context_full` or `cancelled`.
    pub reason: String,
    pub prompt_tokens: u32,
    pub generated_tokens: u32,
}

/// Why a model request failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum ModelFailure {
    /// Too many requests are waiting for a batch slot; try another replica or later.
    #[error("the model replica is overloaded: {queued} requests are waiting")]
    Overloaded { queued: u32 },
    /// The request is malformed; the text names the field.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// No such generation: it never existed here, was read to its end, or was dropped after
    /// nobody polled it for the idle timeout.
    #[error("unknown generation {0}")]
    UnknownGeneration(u64),
    /// The model failed (tokenizer, template, forward pass, worker gone).
    #[error("model error: {0}")]
    Model(String),
}

impl arbor_proto::Coded for ModelFailure {
    fn code(&self) -> arbor_proto::ErrorCode {
        use arbor_proto::ErrorCode;
        match self {
            ModelFailure::Overloaded { .. } => ErrorCode::Overloaded,
            ModelFailure::Invalid(_) => ErrorCode::InvalidJob,
            ModelFailure::UnknownGeneration(_) => ErrorCode::NotFound,
            ModelFailure::Model(_) => ErrorCode::JobFailed,
        }
    }
}

/// The name a finish reason has on the wire.
pub fn reason_name(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Eos => "eos",
        FinishReason::Stop => "stop",
        FinishReason::MaxTokens => "max_tokens",
        FinishReason::ContextFull => "context_full",
        FinishReason::Cancelled => "cancelled",
    }
}

/// The prompt of a checked request: rendering a chat needs the model's template, so it is
/// done by the worker that owns the model.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Prompt {
    Raw(String),
    Chat(Vec<Message>),
}

/// A request that passed [`validate`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Checked {
    pub prompt: Prompt,
    pub params: GenerateParams,
}

/// Checks a spec from the network and turns it into kernel parameters; the error names the
/// field at fault.
pub(crate) fn validate(spec: GenerateSpec) -> Result<Checked, ModelFailure> {
    let invalid = |s: String| Err(ModelFailure::Invalid(s));
    let prompt = match (spec.prompt, spec.messages.is_empty()) {
        (Some(_), false) => {
            return invalid("prompt and messages: give exactly one of them, not both".into());
        }
        (None, true) => return invalid("prompt or messages: one of them is required".into()),
        (Some(p), true) => {
            if p.is_empty() {
                return invalid("prompt: must not be empty".into());
            }
            if p.len() > MAX_PROMPT_BYTES {
                return invalid(format!(
                    "prompt: {} bytes, at most {MAX_PROMPT_BYTES} allowed",
                    p.len()
                ));
            }
            Prompt::Raw(p)
        }
        (None, false) => {
            if spec.messages.len() > MAX_MESSAGES {
                return invalid(format!(
                    "messages: {} given, at most {MAX_MESSAGES} allowed",
                    spec.messages.len()
                ));
            }
            let bytes: usize = spec.messages.iter().map(|m| m.content.len()).sum();
            if bytes > MAX_PROMPT_BYTES {
                return invalid(format!(
                    "messages: {bytes} bytes of content, at most {MAX_PROMPT_BYTES} allowed"
                ));
            }
            Prompt::Chat(
                spec.messages
                    .into_iter()
                    .map(|m| match m.role {
                        ChatRole::System => Message::system(m.content),
                        ChatRole::User => Message::user(m.content),
                        ChatRole::Assistant => Message::assistant(m.content),
                    })
                    .collect(),
            )
        }
    };
    if spec.max_tokens == 0 || spec.max_tokens > MAX_GENERATE_TOKENS {
        return invalid(format!(
            "max_tokens: {} asked, it must be 1 to {MAX_GENERATE_TOKENS}",
            spec.max_tokens
        ));
    }
    let sampling = sampling(spec.temperature, spec.top_p, spec.seed)?;
    if spec.stop.len() > MAX_STOPS {
        return invalid(format!(
            "stop: {} strings, at most {MAX_STOPS} allowed",
            spec.stop.len()
        ));
    }
    if let Some(bad) = spec
        .stop
        .iter()
        .find(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
    {
        return invalid(format!(
            "stop: {bad:?} must be 1 to {MAX_STOP_BYTES} bytes long"
        ));
    }
    Ok(Checked {
        prompt,
        params: GenerateParams {
            max_tokens: spec.max_tokens as usize,
            sampling,
            stop: spec.stop,
        },
    })
}

fn sampling(
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<u64>,
) -> Result<Sampling, ModelFailure> {
    if let Some(t) = temperature
        && !(t.is_finite() && t >= 0.0)
    {
        return Err(ModelFailure::Invalid(format!(
            "temperature: {t} must be a finite number, 0 or more"
        )));
    }
    if let Some(p) = top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return Err(ModelFailure::Invalid(format!(
            "top_p: {p} must be in (0, 1]"
        )));
    }
    let temperature = match (temperature, top_p) {
        (None, None) => return Ok(Sampling::Greedy),
        (Some(0.0), _) => return Ok(Sampling::Greedy),
        (Some(t), _) => t,
        (None, Some(_)) => 1.0,
    };
    Ok(Sampling::TopP {
        temperature,
        top_p: top_p.unwrap_or(1.0),
        seed: seed.unwrap_or_else(rand::random),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Wire;
    use ractor::BytesConvertable;

    fn invalid(spec: GenerateSpec) -> String {
        match validate(spec) {
            Err(ModelFailure::Invalid(why)) => why,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn invalid_specs_name_the_field() {
        let both = GenerateSpec {
            messages: vec![ChatMessage {
                role: ChatRole::User,
                content: "hi".into(),
            }],
            ..GenerateSpec::prompt("hi", 4)
        };
        assert!(invalid(both).starts_with("prompt and messages"));
        let neither = GenerateSpec::chat(vec![], 4);
        assert!(invalid(neither).starts_with("prompt or messages"));
        assert!(invalid(GenerateSpec::prompt("", 4)).starts_with("prompt:"));
        assert!(invalid(GenerateSpec::prompt("hi", 0)).starts_with("max_tokens"));
        assert!(invalid(GenerateSpec::prompt("hi", 2049)).starts_with("max_tokens"));
        for t in [-0.5, f32::NAN, f32::INFINITY] {
            let spec = GenerateSpec {
                temperature: Some(t),
                ..GenerateSpec::prompt("hi", 4)
            };
            assert!(invalid(spec).starts_with("temperature"));
        }
        for p in [0.0, 1.5, f32::NAN] {
            let spec = GenerateSpec {
                top_p: Some(p),
                ..GenerateSpec::prompt("hi", 4)
            };
            assert!(invalid(spec).starts_with("top_p"));
        }
        let spec = GenerateSpec {
            stop: vec![String::new()],
            ..GenerateSpec::prompt("hi", 4)
        };
        assert!(invalid(spec).starts_with("stop"));
    }

    #[test]
    fn sampling_choices() {
        let greedy = validate(GenerateSpec::prompt("hi", 4)).unwrap();
        assert_eq!(greedy.params.sampling, Sampling::Greedy);
        let zero = GenerateSpec {
            temperature: Some(0.0),
            ..GenerateSpec::prompt("hi", 4)
        };
        assert_eq!(validate(zero).unwrap().params.sampling, Sampling::Greedy);
        let warm = GenerateSpec {
            temperature: Some(0.7),
            top_p: Some(0.9),
            seed: Some(3),
            ..GenerateSpec::prompt("hi", 4)
        };
        assert_eq!(
            validate(warm).unwrap().params.sampling,
            Sampling::TopP {
                temperature: 0.7,
                top_p: 0.9,
                seed: 3
            }
        );
    }

    #[test]
    fn json_defaults_and_wire_round_trip() {
        let spec: GenerateSpec = serde_json::from_str(r#"{"prompt": "hi"}"#).unwrap();
        assert_eq!(spec, GenerateSpec::prompt("hi", 256));
        let spec: GenerateSpec =
            serde_json::from_str(r#"{"messages": [{"role": "user", "content": "hi"}]}"#).unwrap();
        assert_eq!(spec.messages[0].role, ChatRole::User);
        assert!(serde_json::from_str::<GenerateSpec>(r#"{"promt": "hi"}"#).is_err());

        let request = ModelRequest::Generate(GenerateSpec {
            stop: vec!["\n".into()],
            temperature: Some(0.5),
            ..GenerateSpec::prompt("hi", 8)
        });
        let bytes = Wire::new(request.clone()).into_bytes();
        assert_eq!(
            Wire::<ModelRequest>::from_bytes(bytes).into_inner(),
            Ok(request)
        );
        let reply: ModelReply = Ok(ModelAnswer::Tokens {
            texts: vec!["a".into(), String::new()],
            next: 2,
            finished: Some(Finished {
                reason: "eos".into(),
                prompt_tokens: 3,
                generated_tokens: 2,
            }),
        });
        let bytes = Wire::new(reply.clone()).into_bytes();
        assert_eq!(
            Wire::<ModelReply>::from_bytes(bytes).into_inner(),
            Ok(reply)
        );
    }
}
