//! `oracle serve`'s HTTP API in-process, on the real default model: the
//! router is driven with `tower::ServiceExt::oneshot`, the engine thread runs
//! the real model. Concurrency, determinism, drafts, streaming shapes, bad
//! input and admission control.
#![allow(clippy::unwrap_used)]

#[path = "../../shared-model/tests/common/mod.rs"]
mod common;

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use oracle::serve::{ServeArgs, Server, build};
use serde_json::{Value, json};
use shared_model::backend::{Cpu, cpu_device};
use shared_model::generate::Generator;
use shared_model::gguf::Gguf;
use shared_model::model::Llama;
use shared_model::sampling::SamplingParams;
use shared_model::session::{SamplingVerifier, Session, SessionConfig};
use shared_model::tokenizer::{EncodeOptions, Tokenizer};
use tower::ServiceExt;

fn server_with(args: ServeArgs) -> Server {
    let args = ServeArgs {
        model: Some(common::default_model()),
        web_dir: Some(std::env::temp_dir().join("shard-no-web-app")),
        ..args
    };
    build::<Cpu>(&args.resolve().unwrap(), &cpu_device()).unwrap()
}

/// One server shared by the tests that do not depend on being alone.
fn shared() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| server_with(ServeArgs::default()))
}

/// The model and tokenizer, for computing what `oracle generate` would output.
struct Reference {
    model: Llama<Cpu>,
    tokenizer: Tokenizer,
}

fn reference() -> &'static Reference {
    static REFERENCE: OnceLock<Reference> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        let mut gguf = Gguf::open(common::default_model()).unwrap();
        let tokenizer = Tokenizer::from_metadata(&gguf.metadata).unwrap();
        let model = Llama::load(&mut gguf, &cpu_device(), None).unwrap();
        Reference { model, tokenizer }
    })
}

/// What `oracle generate` outputs for `prompt` alone (the same library code).
fn generate_alone(prompt: &str, max_tokens: usize, params: SamplingParams) -> String {
    let r = reference();
    let ids = r.tokenizer.encode(prompt, EncodeOptions::PROMPT);
    let session = Session::new(
        ids,
        SessionConfig {
            params,
            verifier: SamplingVerifier::MatchTarget,
            max_new_tokens: max_tokens,
            stop_tokens: r.tokenizer.end_of_generation_tokens(),
            max_context: r.model.config().context_length,
            top_logprobs: None,
        },
    )
    .unwrap();
    let tokens = Generator::<Cpu>::new(&r.model, session).run().unwrap();
    r.tokenizer.decode(&tokens)
}

async fn send(
    app: &axum::Router,
    request: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

fn post(path: &str, body: &Value) -> Request<Body> {
    post_raw(path, body.to_string())
}

fn post_raw(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .unwrap()
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

async fn json_of(app: &axum::Router, request: Request<Body>) -> (StatusCode, Value) {
    let (status, _, body) = send(app, request).await;
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&body)));
    (status, value)
}

/// The `data:` payloads of an SSE body.
fn sse_data(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .lines()
        .filter_map(|l| l.strip_prefix("data: ").map(str::to_owned))
        .collect()
}

const PROMPTS: [&str; 16] = [
    "def fibonacci(n):",
    "The capital of France is",
    "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time",
    "1, 2, 3, 4,",
    "The quick brown fox",
    "import numpy as np\n",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "In 1492,",
    "Rust is a programming language that",
    "Dear Sir or Madam,",
    "The recipe calls for",
    "SELECT * FROM",
    "To be, or not to be,",
    "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n",
    "Water boils at",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_greedy_requests_equal_generating_each_alone() {
    let app = &shared().app;
    let requests = PROMPTS.iter().enumerate().map(|(i, prompt)| async move {
        let max_tokens = 6 + (i * 7) % 20;
        let body = json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0});
        let (status, v) = json_of(app, post("/v1/completions", &body)).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        (i, max_tokens, v)
    });
    let answers = futures::future::join_all(requests).await;
    // The binary itself, for a few of them: `oracle generate` runs the same
    // library path that `generate_alone` does.
    for i in [0usize, 2, 7] {
        let max_tokens = (6 + (i * 7) % 20).to_string();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_oracle"))
            .args([
                "generate",
                "--json",
                "--prompt",
                PROMPTS[i],
                "--max-tokens",
                &max_tokens,
            ])
            .arg("--model")
            .arg(common::default_model())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let generated: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            answers[i].2["choices"][0]["text"], generated["text"],
            "prompt {i}"
        );
    }
    for (i, max_tokens, v) in answers {
        let text = v["choices"][0]["text"].as_str().unwrap();
        let alone = generate_alone(PROMPTS[i], max_tokens, SamplingParams::GREEDY);
        assert_eq!(text, alone, "prompt {i} {:?}", PROMPTS[i]);
        let usage = &v["usage"];
        assert_eq!(
            usage["total_tokens"].as_u64(),
            Some(
                usage["prompt_tokens"].as_u64().unwrap()
                    + usage["completion_tokens"].as_u64().unwrap()
            )
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seeded_sampling_is_reproducible_under_concurrency() {
    let app = &shared().app;
    let prompt = "<|im_start|>user\nTell me a story.<|im_end|>\n<|im_start|>assistant\n";
    let request = |seed: u64| {
        post(
            "/v1/completions",
            &json!({"prompt": prompt, "max_tokens": 16, "temperature": 0.9, "top_p": 0.95, "seed": seed}),
        )
    };
    let answers = futures::future::join_all((0..6).map(|i| async move {
        let (status, v) = json_of(app, request(if i < 4 { 42 } else { 7 })).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        v["choices"][0]["text"].as_str().unwrap().to_owned()
    }))
    .await;
    let params = |seed| SamplingParams {
        temperature: 0.9,
        top_k: 0,
        top_p: 0.95,
        seed,
    };
    let alone_42 = generate_alone(prompt, 16, params(42));
    let alone_7 = generate_alone(prompt, 16, params(7));
    assert_ne!(alone_42, alone_7, "different seeds, different stories");
    for (i, text) in answers.iter().enumerate() {
        assert_eq!(
            text,
            if i < 4 { &alone_42 } else { &alone_7 },
            "request {i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chat_streams_in_openai_chunks_and_equals_the_whole_answer() {
    let app = &shared().app;
    let messages = json!([{"role": "user", "content": "Say hello."}]);
    let (status, whole) = json_of(
        app,
        post(
            "/v1/chat/completions",
            &json!({"messages": messages, "max_tokens": 12, "temperature": 0}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{whole}");
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["choices"][0]["message"]["role"], "assistant");
    let body = json!({
        "messages": messages, "max_tokens": 12, "temperature": 0, "stream": true,
        "stream_options": {"include_usage": true}
    });
    let (status, headers, raw) = send(app, post("/v1/chat/completions", &body)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "text/event-stream");
    let data = sse_data(&raw);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], whole["usage"]);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(
        finish["choices"][0]["finish_reason"],
        whole["choices"][0]["finish_reason"]
    );
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        content,
        whole["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    // Shard's extension: each content chunk names its tokens' texts and whether
    // a draft proposed them (none here: no draft model, no scouts).
    for chunk in chunks.iter().filter(|c| c["shard"].is_object()) {
        let pieces = chunk["shard"]["pieces"].as_array().unwrap();
        let drafted = chunk["shard"]["drafted"].as_array().unwrap();
        assert_eq!(pieces.len(), drafted.len(), "{chunk}");
        assert!(drafted.iter().all(|d| d == false), "{chunk}");
    }
    let pieces: String = chunks
        .iter()
        .filter_map(|c| c["shard"]["pieces"].as_array())
        .flatten()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(pieces, content);
    // Without include_usage there is no usage chunk and no usage field.
    let body = json!({"messages": messages, "max_tokens": 4, "stream": true, "temperature": 0});
    let (_, _, raw) = send(app, post("/v1/chat/completions", &body)).await;
    let data = sse_data(&raw);
    assert!(data.iter().all(|d| !d.contains("\"usage\"")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stop_string_ends_the_text_before_it() {
    let app = &shared().app;
    let prompt = "1, 2, 3, 4,";
    let full = generate_alone(prompt, 20, SamplingParams::GREEDY);
    // Stop at the second comma of the continuation, a string split over tokens.
    let at = full.match_indices(',').nth(1).unwrap().0;
    let stop = full[at - 1..at + 1].to_owned();
    let cut = full.find(&stop).unwrap();
    for stream in [false, true] {
        let body = json!({"prompt": prompt, "max_tokens": 20, "temperature": 0, "stop": [stop], "stream": stream});
        let (status, _, raw) = send(app, post("/v1/completions", &body)).await;
        assert_eq!(status, StatusCode::OK);
        let (text, reason) = if stream {
            let chunks: Vec<Value> = sse_data(&raw)
                .iter()
                .filter(|d| *d != "[DONE]")
                .map(|d| serde_json::from_str(d).unwrap())
                .collect();
            let text: String = chunks
                .iter()
                .map(|c| c["choices"][0]["text"].as_str().unwrap())
                .collect();
            (
                text,
                chunks.last().unwrap()["choices"][0]["finish_reason"].clone(),
            )
        } else {
            let v: Value = serde_json::from_slice(&raw).unwrap();
            (
                v["choices"][0]["text"].as_str().unwrap().to_owned(),
                v["choices"][0]["finish_reason"].clone(),
            )
        };
        assert_eq!(text, full[..cut], "stream: {stream}");
        assert_eq!(reason, "stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logprobs_come_in_each_endpoints_shape() {
    let app = &shared().app;
    let body = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "temperature": 0,
                      "logprobs": true, "top_logprobs": 3});
    let (status, v) = json_of(app, post("/v1/chat/completions", &body)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        content.len() as u64,
        v["usage"]["completion_tokens"].as_u64().unwrap()
    );
    for entry in content {
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(entry["logprob"], top[0]["logprob"]);
        assert!(entry["logprob"].as_f64().unwrap() <= 0.0);
    }
    let body = json!({"prompt": "The sky is", "max_tokens": 3, "temperature": 0, "logprobs": 2});
    let (status, v) = json_of(app, post("/v1/completions", &body)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 3);
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), 3);
    assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 2);
    let joined: String = lp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(joined, v["choices"][0]["text"].as_str().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_get_openai_errors_and_the_server_stays_healthy() {
    let app = &shared().app;
    let chat = "/v1/chat/completions";
    let hello = json!([{"role": "user", "content": "Hi"}]);
    let long_prompt = "word ".repeat(2100);
    // (request, status, the `param` named, the `code`)
    type Case = (
        Request<Body>,
        StatusCode,
        Option<&'static str>,
        Option<&'static str>,
    );
    let cases: Vec<Case> = vec![
        (
            post_raw(chat, "{not json"),
            StatusCode::BAD_REQUEST,
            None,
            None,
        ),
        (post_raw(chat, ""), StatusCode::BAD_REQUEST, None, None),
        (
            post(chat, &json!({"messages": hello, "temperature": "hot"})),
            StatusCode::BAD_REQUEST,
            Some("temperature"),
            None,
        ),
        (
            post(chat, &json!({"messages": "Hi"})),
            StatusCode::BAD_REQUEST,
            Some("messages"),
            None,
        ),
        (
            post(chat, &json!({"messages": []})),
            StatusCode::BAD_REQUEST,
            Some("messages"),
            None,
        ),
        (
            post(chat, &json!({"messages": hello, "model": "gpt-17"})),
            StatusCode::NOT_FOUND,
            Some("model"),
            Some("model_not_found"),
        ),
        (
            post(chat, &json!({"messages": hello, "n": 2})),
            StatusCode::BAD_REQUEST,
            Some("n"),
            Some("unsupported_parameter"),
        ),
        (
            post(
                chat,
                &json!({"messages": hello, "tools": [{"type": "function"}]}),
            ),
            StatusCode::BAD_REQUEST,
            Some("tools"),
            Some("unsupported_parameter"),
        ),
        (
            post(chat, &json!({"messages": hello, "temperature": 3})),
            StatusCode::BAD_REQUEST,
            Some("temperature"),
            None,
        ),
        (
            post(
                chat,
                &json!({"messages": hello, "top_logprobs": 21, "logprobs": true}),
            ),
            StatusCode::BAD_REQUEST,
            Some("top_logprobs"),
            None,
        ),
        (
            post(chat, &json!({"messages": hello, "max_tokens": 1_000_000})),
            StatusCode::BAD_REQUEST,
            Some("max_tokens"),
            Some("context_length_exceeded"),
        ),
        (
            post(chat, &json!({"messages": hello, "max_tokens": 0})),
            StatusCode::BAD_REQUEST,
            Some("max_tokens"),
            None,
        ),
        (
            post(
                chat,
                &json!({"messages": [{"role": "tool", "content": "x"}]}),
            ),
            StatusCode::BAD_REQUEST,
            Some("messages[0].role"),
            None,
        ),
        (
            post(
                chat,
                &json!({"messages": hello, "stop": ["a", "b", "c", "d", "e"]}),
            ),
            StatusCode::BAD_REQUEST,
            Some("stop"),
            None,
        ),
        (
            post("/v1/completions", &json!({"prompt": long_prompt})),
            StatusCode::BAD_REQUEST,
            Some("prompt"),
            Some("context_length_exceeded"),
        ),
        (
            post("/v1/completions", &json!({"prompt": ""})),
            StatusCode::BAD_REQUEST,
            Some("prompt"),
            None,
        ),
        (
            post("/v1/completions", &json!({"prompt": [1, 2, 99_999_999]})),
            StatusCode::BAD_REQUEST,
            Some("prompt"),
            None,
        ),
        (
            post("/v1/completions", &json!({"prompt": "x", "echo": true})),
            StatusCode::BAD_REQUEST,
            Some("echo"),
            Some("unsupported_parameter"),
        ),
        (
            post_raw(chat, vec![b' '; 2 << 20]),
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
            Some("request_too_large"),
        ),
        (
            get("/v1/nothing-here"),
            StatusCode::NOT_FOUND,
            None,
            Some("not_found"),
        ),
        (
            get("/v1/models/gpt-17"),
            StatusCode::NOT_FOUND,
            Some("model"),
            Some("model_not_found"),
        ),
        (
            post(
                chat,
                &json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
            ),
            StatusCode::BAD_REQUEST,
            Some("messages[0].content[0]"),
            Some("unsupported_parameter"),
        ),
        (
            post("/v1/completions", &json!({"prompt": ["a", "b"]})),
            StatusCode::BAD_REQUEST,
            Some("prompt"),
            Some("unsupported_parameter"),
        ),
        (
            post("/v1/completions", &json!({"prompt": "x", "logprobs": 21})),
            StatusCode::BAD_REQUEST,
            Some("logprobs"),
            None,
        ),
        (
            post_raw(chat, "[1, 2]"),
            StatusCode::BAD_REQUEST,
            None,
            None,
        ),
    ];
    for (i, (request, status, param, code)) in cases.into_iter().enumerate() {
        let (got, v) = json_of(app, request).await;
        assert_eq!(got, status, "case {i}: {v}");
        let e = &v["error"];
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "case {i}: {v}"
        );
        assert!(e["type"].is_string(), "case {i}: {v}");
        assert_eq!(e["param"].as_str(), param, "case {i}: {v}");
        if let Some(code) = code {
            assert_eq!(e["code"], code, "case {i}: {v}");
        }
    }
    let (status, v) = json_of(app, get("/health")).await;
    assert_eq!((status, v), (StatusCode::OK, json!({"status": "ok"})));
    let (status, _) = json_of(
        app,
        post("/v1/completions", &json!({"prompt": "Hi", "max_tokens": 2})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn models_status_and_metrics_describe_the_server() {
    let app = &shared().app;
    let (status, v) = json_of(app, get("/v1/models")).await;
    assert_eq!(status, StatusCode::OK);
    let id = v["data"][0]["id"].as_str().unwrap().to_owned();
    assert!(!id.is_empty());
    let (status, _) = json_of(app, get(&format!("/v1/models/{}", id.replace(' ', "%20")))).await;
    assert_eq!(status, StatusCode::OK);
    // The served id, `default` and no model all work.
    for model in [json!(id), json!("default"), Value::Null] {
        let (status, v) = json_of(
            app,
            post(
                "/v1/completions",
                &json!({"prompt": "Hi", "max_tokens": 1, "model": model}),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["model"], json!(id));
    }
    let (status, v) = json_of(app, get("/api/status")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["model"]["id"], json!(id));
    assert_eq!(v["model"]["backend"], "cpu");
    assert!(v["model"]["layers"].as_u64().unwrap() >= 1);
    assert!(v["sessions"]["max_sessions"].as_u64().unwrap() >= 1);
    let (status, _, body) = send(app, get("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body).unwrap();
    for name in [
        "shard_tokens_generated_total",
        "shard_target_forward_passes_total",
        "shard_draft_tokens_proposed_total",
        "shard_draft_tokens_accepted_total",
        "shard_sessions_active",
        "shard_queue_depth",
        "shard_time_to_first_token_seconds_bucket",
        "shard_token_latency_seconds_bucket",
        "shard_requests_total",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    // The web app's place: a page explaining it is not built yet.
    let (status, _, body) = send(app, get("/")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains("not built"));
}

/// Reads a gauge or counter value from the metrics text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

async fn metrics_text(app: &axum::Router) -> String {
    String::from_utf8(send(app, get("/metrics")).await.2).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_gets_429_and_disconnected_clients_free_their_sessions() {
    let server = server_with(ServeArgs {
        max_sessions: Some(1),
        max_queue: Some(1),
        max_batch_tokens: Some(64),
        ..Default::default()
    });
    let app = &server.app;
    let long =
        json!({"prompt": "Once upon a time", "max_tokens": 400, "temperature": 0, "stream": true});
    // One runs, one waits: both get their stream's headers at once.
    let running = app
        .clone()
        .oneshot(post("/v1/completions", &long))
        .await
        .unwrap();
    assert_eq!(running.status(), StatusCode::OK);
    let waiting = app
        .clone()
        .oneshot(post("/v1/completions", &long))
        .await
        .unwrap();
    assert_eq!(waiting.status(), StatusCode::OK);
    let (status, headers, body) = send(app, post("/v1/completions", &long)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        headers[header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "queue_full");
    // Read a little of the running stream, then hang up on both.
    let mut running_body = running.into_body();
    let first = running_body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    drop(running_body);
    drop(waiting);
    // Their sessions are cancelled: the gauges return to 0 long before 400 tokens.
    let mut text = String::new();
    for _ in 0..100 {
        text = metrics_text(app).await;
        if metric(&text, "shard_sessions_active") == 0.0
            && metric(&text, "shard_queue_depth") == 0.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&text, "shard_sessions_active"), 0.0, "{text}");
    assert_eq!(metric(&text, "shard_queue_depth"), 0.0);
    assert!(metric(&text, "shard_tokens_generated_total") < 400.0);
    assert!(
        text.contains("shard_sessions_finished_total{reason=\"cancelled\"} 2"),
        "{text}"
    );
    // And the server still serves.
    let (status, v) = json_of(
        app,
        post("/v1/completions", &json!({"prompt": "Hi", "max_tokens": 3})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_a_draft_model_outputs_are_unchanged_and_drafts_are_accepted() {
    let server = server_with(ServeArgs {
        draft_model: Some(common::default_model()),
        draft_layers: Some(24),
        draft_k: Some(3),
        ..Default::default()
    });
    let app = &server.app;
    let picks = [0usize, 2, 4, 6, 9, 13];
    let answers = futures::future::join_all(picks.iter().map(|&i| async move {
        let body = json!({"prompt": PROMPTS[i], "max_tokens": 16, "temperature": 0});
        let (status, v) = json_of(app, post("/v1/completions", &body)).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        (i, v["choices"][0]["text"].as_str().unwrap().to_owned())
    }))
    .await;
    for (i, text) in answers {
        assert_eq!(
            text,
            generate_alone(PROMPTS[i], 16, SamplingParams::GREEDY),
            "prompt {i}"
        );
    }
    // Streamed, the chunks say which tokens the draft proposed.
    let body = json!({"prompt": PROMPTS[0], "max_tokens": 16, "temperature": 0, "stream": true});
    let (_, _, raw) = send(app, post("/v1/completions", &body)).await;
    let data = sse_data(&raw);
    let drafted: Vec<bool> = data
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| c["shard"]["drafted"].as_array().cloned())
        .flatten()
        .map(|d| d.as_bool().unwrap())
        .collect();
    assert!((1..=16).contains(&drafted.len()), "{data:?}");
    assert!(drafted.iter().any(|&d| d), "{data:?}");
    // Seeded sampling with drafts equals sampling without them.
    let prompt = "<|im_start|>user\nTell me a story.<|im_end|>\n<|im_start|>assistant\n";
    let body = json!({"prompt": prompt, "max_tokens": 12, "temperature": 0.7, "seed": 3});
    let (_, v) = json_of(app, post("/v1/completions", &body)).await;
    let params = SamplingParams {
        temperature: 0.7,
        top_k: 0,
        top_p: 1.0,
        seed: 3,
    };
    assert_eq!(
        v["choices"][0]["text"].as_str().unwrap(),
        generate_alone(prompt, 12, params)
    );
    let text = metrics_text(app).await;
    assert!(
        metric(&text, "shard_draft_tokens_proposed_total") > 0.0,
        "{text}"
    );
    assert!(
        metric(&text, "shard_draft_tokens_accepted_total") > 0.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_guards_the_api_but_not_health() {
    let server = server_with(ServeArgs {
        api_key: Some("sesame".into()),
        ..Default::default()
    });
    let app = &server.app;
    let (status, v) = json_of(app, get("/v1/models")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"]["code"], "invalid_api_key");
    let request = Request::get("/v1/models")
        .header(header::AUTHORIZATION, "Bearer sesame")
        .body(Body::empty())
        .unwrap();
    let (status, _) = json_of(app, request).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = json_of(app, get("/health")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_websocket_streams_engine_events() {
    use futures::StreamExt;
    let app = shared().app.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    // Requests keep coming until the feed has shown a whole session's life
    // (the subscription starts a moment after the handshake).
    let traffic = tokio::spawn(async {
        loop {
            let body = json!({"prompt": "Hello", "max_tokens": 3, "temperature": 0});
            let (status, _) = json_of(&shared().app, post("/v1/completions", &body)).await;
            assert_eq!(status, StatusCode::OK);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let mut seen = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !(seen.contains("session_started")
        && seen.contains("session_progress")
        && seen.contains("pass")
        && seen.contains("session_finished"))
    {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .expect("events within 30 s")
            .unwrap()
            .unwrap();
        let event: Value = serde_json::from_str(message.to_text().unwrap()).unwrap();
        seen.insert(event["type"].as_str().unwrap().to_owned());
    }
    traffic.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scout_model_downloads_with_ranges_etags_and_no_api_key() {
    let server = server_with(ServeArgs {
        api_key: Some("sesame".into()),
        ..Default::default()
    });
    let dir = std::env::temp_dir().join(format!("shard-models-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("draft model.gguf");
    let bytes: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&path, &bytes).unwrap();
    let manifest = oracle::weights::manifest_of(&path).unwrap();
    let served = oracle::http::ServedModel::new(path, manifest, Some(2));
    let (url, etag) = (served.url.clone(), format!("\"{}\"", served.sha256));
    assert_eq!(url, "/models/draft%20model.gguf");
    server.state.scout_model.set(served).unwrap();
    let app = &server.app;
    let with = |name: header::HeaderName, value: &str| {
        Request::get(&url)
            .header(name, value)
            .body(Body::empty())
            .unwrap()
    };

    // Whole file, public although the API needs a key.
    let (status, headers, body) = send(app, get(&url)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, bytes);
    assert_eq!(headers[header::ETAG], etag.as_str());
    assert_eq!(headers[header::ACCEPT_RANGES], "bytes");
    assert_eq!(headers[header::CACHE_CONTROL], "no-cache");

    // Ranges, for resuming.
    let (status, headers, body) = send(app, with(header::RANGE, "bytes=10-19")).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, &bytes[10..20]);
    assert_eq!(headers[header::CONTENT_RANGE], "bytes 10-19/5000");
    let (status, _, body) = send(app, with(header::RANGE, "bytes=4990-")).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, &bytes[4990..]);
    let (status, _, _) = send(app, with(header::RANGE, "bytes=6000-")).await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);

    // A range only while the file is the one the client started on.
    let resume = Request::get(&url)
        .header(header::RANGE, "bytes=100-")
        .header(header::IF_RANGE, etag.as_str())
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = send(app, resume).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, &bytes[100..]);
    let stale = Request::get(&url)
        .header(header::RANGE, "bytes=100-")
        .header(header::IF_RANGE, "\"another file\"")
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = send(app, stale).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, bytes);

    // Revalidation.
    let (status, _, body) = send(app, with(header::IF_NONE_MATCH, &etag)).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
    let (status, _, body) = send(app, with(header::IF_NONE_MATCH, "\"old\"")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.len(), 5000);

    // Unknown names are 404s with an error code, never a file from elsewhere.
    for name in [
        "/models/other.gguf",
        "/models/..%2Fetc%2Fpasswd",
        "/models/draft",
    ] {
        let (status, v) = json_of(app, get(name)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{name}");
        assert_eq!(v["error"]["code"], "model_not_found");
    }

    // Status says where the model is; metrics count what was sent.
    let status_request = Request::get("/api/status")
        .header(header::AUTHORIZATION, "Bearer sesame")
        .body(Body::empty())
        .unwrap();
    let (_, v) = json_of(app, status_request).await;
    assert_eq!(v["scout_model"]["url"], url.as_str());
    assert_eq!(v["scout_model"]["size"], 5000);
    assert_eq!(v["scout_model"]["layers"], 2);
    assert_eq!(v["scout_model"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(v["scout_model"]["pieces"], 1);
    assert!(v["scout_model"].get("path").is_none());
    assert!(v["scout_model"].get("manifest").is_none());
    let sent = metric(&metrics_text(app).await, "shard_model_bytes_served_total");
    assert_eq!(sent, (5000 + 10 + 10 + 4900 + 5000 + 5000) as f64);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scout_model_is_served_in_pieces_each_checked_against_its_manifest() {
    let server = server_with(ServeArgs {
        api_key: Some("sesame".into()),
        ..Default::default()
    });
    let dir = std::env::temp_dir().join(format!("shard-pieces-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("draft.gguf");
    // 300,000 bytes: five 64 KiB pieces, the last one short.
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 13 % 251) as u8).collect();
    std::fs::write(&path, &bytes).unwrap();
    let manifest = oracle::weights::manifest_of(&path).unwrap();
    let cid = manifest.cid().to_string();
    let served = oracle::http::ServedModel::new(path, manifest, None);
    assert_eq!(served.manifest_url, format!("/models/{cid}/manifest"));
    server.state.scout_model.set(served).unwrap();
    let app = &server.app;

    // The manifest: exactly the bytes its content id names, public, immutable.
    let (status, headers, body) = send(app, get(&format!("/models/{cid}/manifest"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers[header::CACHE_CONTROL],
        "public, max-age=31536000, immutable"
    );
    let id = shared_proto::ContentId::from_bytes(&hex::decode(&cid).unwrap()).unwrap();
    let manifest = shared_weights::Manifest::from_bytes(&id, body).unwrap();
    assert_eq!(manifest.piece_count(), 5);

    // Every piece passes its check, and together they are the file.
    let mut joined = Vec::new();
    for i in 0..5 {
        let (status, headers, body) = send(app, get(&format!("/models/{cid}/pieces/{i}"))).await;
        assert_eq!(status, StatusCode::OK, "piece {i}");
        manifest.check_piece(i, &body).unwrap();
        let etag = headers[header::ETAG].to_str().unwrap().to_owned();
        let again = Request::get(format!("/models/{cid}/pieces/{i}"))
            .header(header::IF_NONE_MATCH, etag)
            .body(Body::empty())
            .unwrap();
        assert_eq!(send(app, again).await.0, StatusCode::NOT_MODIFIED);
        joined.extend_from_slice(&body);
    }
    assert_eq!(joined, bytes);

    // Bad input: a typed error, never a panic or another file's bytes.
    let (status, v) = json_of(app, get(&format!("/models/{cid}/pieces/5"))).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("piece_not_found"))
    );
    let (status, v) = json_of(app, get(&format!("/models/{cid}/pieces/-1"))).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_piece"))
    );
    let (status, v) = json_of(app, get(&format!("/models/{cid}/pieces/99999999999"))).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_piece"))
    );
    let other = shared_proto::ContentId::digest(b"another model");
    let (status, v) = json_of(app, get(&format!("/models/{other}/manifest"))).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("model_not_found"))
    );
    let (status, _) = json_of(app, get(&format!("/models/{other}/pieces/0"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The file changes on disk under the running oracle: its pieces are no
    // longer what the manifest names, and none is sent as if it were.
    let mut changed = bytes.clone();
    changed[70_000] ^= 1;
    std::fs::write(dir.join("draft.gguf"), &changed).unwrap();
    let (status, _, body) = send(app, get(&format!("/models/{cid}/pieces/1"))).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(String::from_utf8_lossy(&body).contains("changed since its manifest was made"));
    let (status, _, _) = send(app, get(&format!("/models/{cid}/pieces/0"))).await;
    assert_eq!(status, StatusCode::OK);
    std::fs::remove_dir_all(&dir).unwrap();
}
