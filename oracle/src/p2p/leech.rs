//! Answers to p2p leeches (`/shard/1.0.0/complete`): the same engine, the same
//! limits and the same queue as the HTTP API. A peer whose drafts earned credit
//! here waits ahead of others, and the answer's tokens are taken off its credit.

use std::sync::Arc;

use libp2p::PeerId;
use scout_wasm::net;
use scout_wasm::wire::params_from_wire;
use shared_model::session::{SamplingVerifier, Session, SessionConfig};
use shared_model::tokenizer::{EncodeOptions, Tokenizer};
use shared_proto::{limits, pb};

use crate::engine::{EngineHandle, SessionEvent, SubmitError};
use crate::scheduler::{Finish, Priority, Rejected, Request};
use crate::trust::Ledger;

/// What answering needs besides the request.
#[derive(Clone)]
pub(crate) struct Completions {
    /// The engine that generates.
    pub(crate) engine: EngineHandle,
    /// The model's tokenizer (prompts arrive as text).
    pub(crate) tokenizer: Arc<Tokenizer>,
    /// Longest prompt + answer.
    pub(crate) max_context: usize,
    /// Where credit is looked up.
    pub(crate) ledger: Arc<Ledger>,
}

/// A completion refused with `code` (seed 004's names) and a reason.
pub(super) fn refusal(code: &str, why: &str) -> pb::CompletionResponse {
    pb::CompletionResponse {
        ack: Some(net::ack_error(code, why)),
        ..Default::default()
    }
}

impl Completions {
    /// The answer to `request` from `peer` (validated by the codec already).
    pub(crate) async fn answer(
        &self,
        peer: PeerId,
        request: pb::CompletionRequest,
    ) -> pb::CompletionResponse {
        let Some(sampling) = request.sampling.as_ref() else {
            return refusal("INVALID_ARGUMENT", "sampling is required");
        };
        let params = params_from_wire(sampling);
        let tokenizer = self.tokenizer.clone();
        let text = request.prompt.clone();
        let prompt = match tokio::task::spawn_blocking(move || {
            tokenizer.encode(&text, EncodeOptions::PROMPT)
        })
        .await
        {
            Ok(prompt) => prompt,
            Err(e) => return refusal("INTERNAL", &format!("tokenizing failed: {e}")),
        };
        if prompt.is_empty() || prompt.len() >= self.max_context {
            return refusal(
                "INVALID_ARGUMENT",
                &format!(
                    "the prompt has {} tokens; this oracle's context is {} tokens",
                    prompt.len(),
                    self.max_context
                ),
            );
        }
        let max_new_tokens = (request.max_tokens as usize).min(self.max_context - prompt.len());
        let prompt_tokens = prompt.len();
        let session = match Session::new(
            prompt,
            SessionConfig {
                params,
                verifier: SamplingVerifier::MatchTarget,
                max_new_tokens,
                stop_tokens: self.tokenizer.end_of_generation_tokens(),
                max_context: self.max_context,
                top_logprobs: crate::engine::alternatives_to_record(&params, None),
            },
        ) {
            Ok(s) => s,
            Err(e) => return refusal("INVALID_ARGUMENT", &e.to_string()),
        };
        let ledger = self.ledger.clone();
        let credit = tokio::task::spawn_blocking(move || ledger.get(&peer))
            .await
            .ok()
            .and_then(Result::ok)
            .map_or(0, |r| r.credits);
        let payer = (credit > 0).then_some(peer);
        let submitted = self
            .engine
            .submit(
                Request {
                    session,
                    stop_strings: request.stop,
                    priority: if payer.is_some() {
                        Priority::Contributor
                    } else {
                        Priority::Normal
                    },
                },
                payer,
            )
            .await;
        let mut stream = match submitted {
            Ok(stream) => stream,
            Err(SubmitError::Rejected(e @ Rejected::QueueFull { .. })) => {
                return refusal("RESOURCE_EXHAUSTED", &e.to_string());
            }
            Err(SubmitError::Rejected(e @ Rejected::TooLarge { .. })) => {
                return refusal("INVALID_ARGUMENT", &e.to_string());
            }
            Err(e) => return refusal("UNAVAILABLE", &e.to_string()),
        };
        let mut text = String::new();
        let mut tokens = Vec::new();
        loop {
            match stream.next().await {
                Some(SessionEvent::Delta { tokens: t, text: x }) => {
                    text.push_str(&x);
                    tokens.extend(t.iter().map(|t| t.token));
                }
                Some(SessionEvent::Finished { finish, .. }) => {
                    if let Finish::Failed(e) = &finish {
                        return refusal("INTERNAL", &format!("generation failed: {e}"));
                    }
                    if finish == Finish::Cancelled {
                        return refusal("UNAVAILABLE", "cancelled: the oracle is shutting down");
                    }
                    if text.len() > limits::MAX_TEXT_BYTES {
                        return refusal(
                            "RESOURCE_EXHAUSTED",
                            "the answer is too long for one frame",
                        );
                    }
                    return pb::CompletionResponse {
                        ack: Some(net::ack_ok()),
                        text,
                        token_ids: tokens,
                        finish_reason: finish.reason().to_owned(),
                        prompt_tokens: prompt_tokens as u32,
                        contributor: payer.is_some(),
                    };
                }
                None => return refusal("UNAVAILABLE", "the engine stopped"),
            }
        }
    }
}
