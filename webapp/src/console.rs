//! *Console*: a chat with the oracle's model through its OpenAI-compatible API
//! (`POST /v1/chat/completions`, streamed), or plain text completion
//! (`POST /v1/completions`: the prompt exactly as typed, as `oracle generate`
//! takes it). Verified tokens appear as the oracle
//! sends them; the ones a scout drafted are marked, from Shard's `shard`
//! extension of each chunk (every token's text and whether a draft proposed it).

use leptos::prelude::*;
use serde_json::{Value, json};
use wasm_bindgen::{JsCast as _, JsValue};
use wasm_bindgen_futures::JsFuture;

use crate::api;

/// A stretch of an answer: one token's text, or several when the chunk's
/// tokens could not be split into texts (a character cut between tokens).
#[derive(Debug, Clone, PartialEq)]
struct Piece {
    text: String,
    drafted: bool,
}

/// Which endpoint the console talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A conversation, through the model's chat template.
    Chat,
    /// The prompt as typed, continued.
    Complete,
}

impl Mode {
    fn path(self) -> &'static str {
        match self {
            Mode::Chat => "/v1/chat/completions",
            Mode::Complete => "/v1/completions",
        }
    }
}

/// Who said a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    User,
    Assistant,
}

/// Where an answer is.
#[derive(Debug, Clone, PartialEq)]
enum Progress {
    /// Sent; nothing back yet.
    Waiting,
    /// Tokens are arriving.
    Streaming,
    /// Ended by the oracle: `stop`, `length`, … and the tokens it counted.
    Finished { reason: String, tokens: Option<u64> },
    /// Stopped by the person.
    Stopped,
}

/// One turn of the chat.
#[derive(Debug, Clone, PartialEq)]
struct Turn {
    role: Role,
    pieces: Vec<Piece>,
    /// Answers only.
    progress: Option<Progress>,
}

impl Turn {
    fn text(&self) -> String {
        self.pieces.iter().map(|p| p.text.as_str()).collect()
    }

    /// The line under an answer.
    fn note(&self) -> Option<String> {
        let drafted = self.pieces.iter().filter(|p| p.drafted).count();
        Some(match self.progress.as_ref()? {
            Progress::Waiting => "Waiting for the oracle…".to_owned(),
            Progress::Streaming => return None,
            Progress::Finished { reason, tokens } => {
                let why = match reason.as_str() {
                    "stop" => "Finished",
                    "length" => "Reached max tokens",
                    other => other,
                };
                let tokens = tokens.unwrap_or(self.pieces.len() as u64);
                format!("{why}: {tokens} tokens, {drafted} drafted by scouts.")
            }
            Progress::Stopped => format!("Stopped: {drafted} tokens drafted by scouts."),
        })
    }
}

/// The generation settings, as typed.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Settings {
    max_tokens: u32,
    temperature: f32,
    seed: Option<u64>,
}

/// Why an answer did not come.
#[derive(Debug, Clone, PartialEq)]
enum ConsoleError {
    /// The oracle's queue is full (HTTP 429 `queue_full`).
    QueueFull { retry_after_s: Option<u64> },
    /// The oracle answered with an error.
    Refused(String),
    /// No answer at all.
    Unreachable(String),
}

impl std::fmt::Display for ConsoleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConsoleError::QueueFull { retry_after_s } => {
                write!(f, "The oracle is busy: its queue is full.")?;
                match retry_after_s {
                    Some(s) => write!(f, " Try again in {s} s."),
                    None => write!(f, " Try again shortly."),
                }
            }
            ConsoleError::Refused(why) => write!(f, "The oracle refused: {why}"),
            ConsoleError::Unreachable(why) => write!(f, "The oracle is unreachable ({why})."),
        }
    }
}

/// The *Console* page.
#[component]
pub(crate) fn Console() -> impl IntoView {
    let turns = RwSignal::new(Vec::<Turn>::new());
    let mode = RwSignal::new(Mode::Chat);
    let input = RwSignal::new(String::new());
    let max_tokens = RwSignal::new("128".to_owned());
    let temperature = RwSignal::new("0".to_owned());
    let seed = RwSignal::new(String::new());
    let busy = RwSignal::new(false);
    let error = RwSignal::new(None::<String>);
    let abort = StoredValue::new_local(None::<web_sys::AbortController>);

    let settings = move || -> Result<Settings, String> {
        let max_tokens = max_tokens
            .get()
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=4096).contains(n))
            .ok_or("Max tokens must be a whole number from 1 to 4096.")?;
        let temperature = temperature
            .get()
            .trim()
            .parse::<f32>()
            .ok()
            .filter(|t| (0.0..=2.0).contains(t))
            .ok_or("Temperature must be a number from 0 to 2.")?;
        let seed = match seed.get().trim() {
            "" => None,
            s => Some(
                s.parse::<u64>()
                    .map_err(|_| "The seed must be a whole number, or empty.")?,
            ),
        };
        Ok(Settings {
            max_tokens,
            temperature,
            seed,
        })
    };
    let settings_error = move || settings().err();

    let send = move || {
        let prompt = input.get();
        if busy.get_untracked() || prompt.trim().is_empty() {
            return;
        }
        let Ok(settings) = settings() else { return };
        let Ok(controller) = web_sys::AbortController::new() else {
            error.set(Some(
                "This browser cannot stop requests (no AbortController).".into(),
            ));
            return;
        };
        error.set(None);
        input.set(String::new());
        let prompt_text = prompt.clone();
        turns.update(|t| {
            t.push(Turn {
                role: Role::User,
                pieces: vec![Piece {
                    text: prompt,
                    drafted: false,
                }],
                progress: None,
            });
        });
        let mode = mode.get_untracked();
        let request = match mode {
            Mode::Chat => chat_request(&turns.get_untracked(), settings),
            Mode::Complete => completion_request(&prompt_text, settings),
        };
        turns.update(|t| {
            t.push(Turn {
                role: Role::Assistant,
                pieces: Vec::new(),
                progress: Some(Progress::Waiting),
            });
        });
        let signal = controller.signal();
        abort.set_value(Some(controller));
        busy.set(true);
        leptos::task::spawn_local(async move {
            let result = stream(mode.path(), &request, &signal, |update| {
                turns.update(|t| {
                    if let Some(answer) = t.last_mut() {
                        apply(answer, update);
                    }
                });
            })
            .await;
            match result {
                Ok(()) => {}
                Err(_) if signal.aborted() => turns.update(|t| {
                    if let Some(answer) = t.last_mut() {
                        answer.progress = Some(Progress::Stopped);
                    }
                }),
                Err(e) => {
                    // A failed request leaves no empty answer behind.
                    turns.update(|t| {
                        if t.last().is_some_and(|a| a.pieces.is_empty()) {
                            t.pop();
                        }
                    });
                    error.set(Some(e.to_string()));
                }
            }
            abort.set_value(None);
            busy.set(false);
        });
    };
    let stop = move || {
        abort.with_value(|c| {
            if let Some(c) = c {
                c.abort();
            }
        });
    };
    let on_keydown = move |ev: web_sys::KeyboardEvent| {
        // Enter sends, Shift+Enter is a new line.
        if ev.key() == "Enter" && !ev.shift_key() {
            ev.prevent_default();
            send();
        }
    };

    view! {
        <section class="card console" aria-labelledby="console-title">
            <h1 id="console-title">"Console"</h1>
            <p class="lead">
                "Chat with the oracle's model. Every token shown was verified by the model itself; "
                <span class="drafted">"tokens like these"</span>
                " were guessed by a scout and accepted."
            </p>
            <ol class="chat" aria-live="polite" data-testid="chat">
                {move || {
                    turns
                        .get()
                        .into_iter()
                        .map(|turn| view! { <TurnView turn /> })
                        .collect_view()
                }}
            </ol>
            {move || {
                error.get().map(|e| view! { <p class="error" role="alert" data-testid="console-error">{e}</p> })
            }}
            <form class="ask" on:submit=move |ev| {
                ev.prevent_default();
                send();
            }>
                <label for="console-input" class="sr-only">"Your message"</label>
                <textarea
                    id="console-input"
                    data-testid="console-input"
                    rows="3"
                    placeholder="Ask something (Enter sends, Shift+Enter adds a line)"
                    prop:value=move || input.get()
                    on:input=move |ev| input.set(event_target_value(&ev))
                    on:keydown=on_keydown
                ></textarea>
                <div class="controls">
                    <label>
                        "Mode "
                        <select
                            data-testid="console-mode"
                            prop:disabled=move || busy.get()
                            on:change=move |ev| {
                                mode.set(if event_target_value(&ev) == "complete" { Mode::Complete } else { Mode::Chat });
                            }
                        >
                            <option value="chat">"Chat"</option>
                            <option value="complete">"Complete text"</option>
                        </select>
                    </label>
                    <label>
                        "Max tokens "
                        <input
                            type="number" min="1" max="4096" inputmode="numeric"
                            data-testid="console-max-tokens"
                            prop:value=move || max_tokens.get()
                            on:input=move |ev| max_tokens.set(event_target_value(&ev))
                        />
                    </label>
                    <label>
                        "Temperature "
                        <input
                            type="number" min="0" max="2" step="0.1" inputmode="decimal"
                            data-testid="console-temperature"
                            prop:value=move || temperature.get()
                            on:input=move |ev| temperature.set(event_target_value(&ev))
                        />
                    </label>
                    <label>
                        "Seed "
                        <input
                            type="text" inputmode="numeric" placeholder="random"
                            data-testid="console-seed"
                            prop:value=move || seed.get()
                            on:input=move |ev| seed.set(event_target_value(&ev))
                        />
                    </label>
                    {move || {
                        if busy.get() {
                            view! {
                                <button type="button" class="primary" data-testid="console-stop" on:click=move |_| stop()>
                                    "Stop"
                                </button>
                            }
                                .into_any()
                        } else {
                            view! {
                                <button
                                    type="submit"
                                    class="primary"
                                    data-testid="console-send"
                                    prop:disabled=move || settings_error().is_some()
                                >
                                    "Send"
                                </button>
                            }
                                .into_any()
                        }
                    }}
                </div>
                {move || settings_error().map(|e| view! { <p class="error" data-testid="console-settings-error">{e}</p> })}
            </form>
        </section>
    }
}

/// One turn as shown.
#[component]
fn TurnView(turn: Turn) -> impl IntoView {
    let (class, who) = match turn.role {
        Role::User => ("turn user", "You"),
        Role::Assistant => ("turn assistant", "Model"),
    };
    let testid = match turn.role {
        Role::User => "turn-user",
        Role::Assistant => "turn-answer",
    };
    let note = turn.note();
    let pieces = turn
        .pieces
        .into_iter()
        .map(|p| {
            view! { <span class:drafted=p.drafted>{p.text}</span> }
        })
        .collect_view();
    view! {
        <li class=class>
            <span class="who">{who}</span>
            <p class="text" data-testid=testid>{pieces}</p>
            {note.map(|n| view! { <p class="note" data-testid="turn-note">{n}</p> })}
        </li>
    }
}

/// What one streamed chunk adds to the answer.
#[derive(Debug, Clone, PartialEq)]
enum ChunkUpdate {
    Pieces(Vec<Piece>),
    Finished { reason: String },
    Usage { completion_tokens: u64 },
}

fn apply(answer: &mut Turn, update: ChunkUpdate) {
    match update {
        ChunkUpdate::Pieces(pieces) => {
            answer.pieces.extend(pieces);
            answer.progress = Some(Progress::Streaming);
        }
        ChunkUpdate::Finished { reason } => {
            answer.progress = Some(Progress::Finished {
                reason,
                tokens: None,
            });
        }
        ChunkUpdate::Usage { completion_tokens } => {
            if let Some(Progress::Finished { tokens, .. }) = &mut answer.progress {
                *tokens = Some(completion_tokens);
            }
        }
    }
}

/// The request body to continue `prompt` as it is.
fn completion_request(prompt: &str, settings: Settings) -> Value {
    streamed_request(json!({ "prompt": prompt }), settings)
}

/// The request body for the chat so far (the last turn is the prompt).
fn chat_request(turns: &[Turn], settings: Settings) -> Value {
    let messages: Vec<Value> = turns
        .iter()
        .map(|t| {
            let role = match t.role {
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            json!({"role": role, "content": t.text()})
        })
        .collect();
    streamed_request(json!({ "messages": messages }), settings)
}

/// `body` with the settings and streaming (usage in the last chunk) added.
fn streamed_request(mut body: Value, settings: Settings) -> Value {
    body["max_tokens"] = json!(settings.max_tokens);
    body["temperature"] = json!(settings.temperature);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    if let Some(seed) = settings.seed {
        body["seed"] = json!(seed);
    }
    body
}

/// What one chunk of the stream says, or `None` for chunks that add nothing.
fn parse_chunk(chunk: &Value) -> Result<Option<ChunkUpdate>, ConsoleError> {
    if let Some(error) = chunk.get("error") {
        let message = error["message"].as_str().unwrap_or("unknown error");
        return Err(ConsoleError::Refused(message.to_owned()));
    }
    if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
        return Ok(Some(ChunkUpdate::Usage {
            completion_tokens: usage["completion_tokens"].as_u64().unwrap_or(0),
        }));
    }
    let choice = &chunk["choices"][0];
    if let Some(reason) = choice["finish_reason"].as_str() {
        return Ok(Some(ChunkUpdate::Finished {
            reason: reason.to_owned(),
        }));
    }
    // Chat chunks carry `delta.content`, completion chunks `text`.
    let content = choice["delta"]["content"]
        .as_str()
        .or_else(|| choice["text"].as_str())
        .unwrap_or("");
    if content.is_empty() {
        return Ok(None);
    }
    Ok(Some(ChunkUpdate::Pieces(pieces(content, &chunk["shard"]))))
}

/// Splits a chunk's text by token when the oracle's per-token texts add up
/// to it; otherwise one piece, marked drafted only if every token was.
fn pieces(content: &str, shard: &Value) -> Vec<Piece> {
    let texts: Vec<&str> = shard["pieces"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let drafted: Vec<bool> = shard["drafted"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_bool).collect())
        .unwrap_or_default();
    if !texts.is_empty() && texts.len() == drafted.len() && texts.concat() == content {
        texts
            .into_iter()
            .zip(drafted)
            .map(|(text, drafted)| Piece {
                text: text.to_owned(),
                drafted,
            })
            .collect()
    } else {
        vec![Piece {
            text: content.to_owned(),
            drafted: !drafted.is_empty() && drafted.iter().all(|&d| d),
        }]
    }
}

/// POSTs `request` to `path` and feeds every chunk of the streamed answer to
/// `on_update` as it arrives.
async fn stream(
    path: &str,
    request: &Value,
    signal: &web_sys::AbortSignal,
    mut on_update: impl FnMut(ChunkUpdate),
) -> Result<(), ConsoleError> {
    let unreachable = |e: JsValue| ConsoleError::Unreachable(api::describe(&e));
    let window = web_sys::window().ok_or_else(|| ConsoleError::Unreachable("no window".into()))?;
    let init = web_sys::RequestInit::new();
    init.set_method("POST");
    init.set_body(&JsValue::from_str(&request.to_string()));
    init.set_signal(Some(signal));
    let headers = web_sys::Headers::new().map_err(unreachable)?;
    headers
        .set("content-type", "application/json")
        .map_err(unreachable)?;
    init.set_headers(&headers);
    let response: web_sys::Response = JsFuture::from(window.fetch_with_str_and_init(path, &init))
        .await
        .map_err(unreachable)?
        .unchecked_into();
    if !response.ok() {
        return Err(refusal(&response).await);
    }
    let body = response
        .body()
        .ok_or_else(|| ConsoleError::Refused("the answer has no body".into()))?;
    let reader: web_sys::ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    let mut buffer = Vec::<u8>::new();
    loop {
        let read = JsFuture::from(reader.read()).await.map_err(unreachable)?;
        let done = js_sys::Reflect::get(&read, &"done".into())
            .ok()
            .and_then(|d| d.as_bool())
            .unwrap_or(true);
        if done {
            return Ok(());
        }
        let value = js_sys::Reflect::get(&read, &"value".into()).map_err(unreachable)?;
        buffer.extend(js_sys::Uint8Array::new(&value).to_vec());
        // Server-sent events end with a blank line; an event's bytes may
        // arrive in several reads.
        while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buffer.drain(..end + 2).collect();
            for line in String::from_utf8_lossy(&event).lines() {
                let Some(data) = line.strip_prefix("data:").map(str::trim_start) else {
                    continue;
                };
                if data == "[DONE]" {
                    return Ok(());
                }
                let chunk: Value = serde_json::from_str(data).map_err(|e| {
                    ConsoleError::Refused(format!("a chunk of the answer does not parse: {e}"))
                })?;
                if let Some(update) = parse_chunk(&chunk)? {
                    on_update(update);
                }
            }
        }
    }
}

/// The error an unsuccessful answer carries.
async fn refusal(response: &web_sys::Response) -> ConsoleError {
    let status = response.status();
    let retry_after_s = response
        .headers()
        .get("retry-after")
        .ok()
        .flatten()
        .and_then(|s| s.trim().parse().ok());
    let body: Value = match response.text() {
        Ok(text) => JsFuture::from(text)
            .await
            .ok()
            .and_then(|t| t.as_string())
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    let error = &body["error"];
    if status == 429 && error["code"] == "queue_full" {
        return ConsoleError::QueueFull { retry_after_s };
    }
    let message = error["message"].as_str().map_or_else(
        || format!("HTTP {status}"),
        |m| format!("{m} (HTTP {status})"),
    );
    ConsoleError::Refused(message)
}
