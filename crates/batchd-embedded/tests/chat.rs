//! The embedded chat model against the real SmolLM2 GGUF: answers, seeds, maxTokens, stop
//! sequences, continuous batching with more requests than slots, and cancelled requests.
//! Without the model files these tests print why and pass, unless `CI` is set.
#![allow(clippy::unwrap_used)]

use std::sync::OnceLock;
use std::time::Duration;

use batchd_backends::{ErrorKind, ModelBackend};
use batchd_embedded::{
    ChatModelConfig, ChatModelFiles, ChatWeights, EmbeddedChat, default_cache_dir,
};
use batchd_formats::neutral::{
    ChatMessage, ChatRequest, ChatResponse, ContentPart, EmbedRequest, Role, StopReason,
};
use batchd_testkit::found_or_skip;
use futures::future::join_all;

const SLOTS: usize = 4;

/// The model, loaded once per test binary; `None` (test skipped) when the files are missing
/// outside CI.
fn chat() -> Option<&'static EmbeddedChat> {
    static CHAT: OnceLock<Option<EmbeddedChat>> = OnceLock::new();
    CHAT.get_or_init(|| {
        let cache = default_cache_dir(|name| std::env::var_os(name));
        let files = found_or_skip(
            ChatModelFiles::locate(&cache),
            "the model tests",
            "CI must run scripts/models.sh first",
        )?;
        let config = ChatModelConfig {
            max_sequences: SLOTS,
            context_per_sequence: 1024,
            ..ChatModelConfig::from_files(&files)
        };
        Some(EmbeddedChat::load(config).unwrap())
    })
    .as_ref()
}

fn ask(question: &str) -> ChatRequest {
    ChatRequest {
        messages: vec![ChatMessage {
            role: Role::User,
            content: vec![ContentPart::Text(question.into())],
        }],
        max_tokens: Some(48),
        temperature: Some(0.0),
        ..ChatRequest::default()
    }
}

/// A request for a long answer, cut at `max_tokens`.
fn essay(max_tokens: u32) -> ChatRequest {
    ChatRequest {
        max_tokens: Some(max_tokens),
        ..ask("Write a long essay about the history of Rome.")
    }
}

fn text(response: &ChatResponse) -> &str {
    match response.content.as_slice() {
        [ContentPart::Text(text)] => text,
        other => panic!("expected one text part, got {other:?}"),
    }
}

#[tokio::test]
async fn answers_the_capital_of_france_greedily() {
    let Some(chat) = chat() else { return };
    let response = chat
        .chat(&ask("What is the capital of France?"))
        .await
        .unwrap();
    assert!(text(&response).contains("Paris"), "{response:?}");
    assert!(response.usage.input_tokens > 5, "{response:?}");
    assert!(response.usage.output_tokens > 0, "{response:?}");
    assert_eq!(response.stop_sequence, None);
}

#[tokio::test]
async fn the_shipped_q4_1_weights_answer_too() {
    // The default runs Q8_0 weights derived from the shipped file; the file itself works too.
    let Some(chat) = chat() else { return };
    let config = ChatModelConfig {
        weights: ChatWeights::AsShipped,
        max_sequences: 1,
        ..chat.config().clone()
    };
    let shipped = EmbeddedChat::load(config).unwrap();
    let response = shipped
        .chat(&ask("What is the capital of France?"))
        .await
        .unwrap();
    assert!(text(&response).contains("Paris"), "{response:?}");
}

#[tokio::test]
async fn the_same_seed_gives_the_same_text() {
    let Some(chat) = chat() else { return };
    let request = |seed: u64| ChatRequest {
        temperature: Some(1.0),
        top_p: Some(1.0),
        max_tokens: Some(24),
        extra: Some(
            serde_json::json!({ "seed": seed })
                .as_object()
                .unwrap()
                .clone(),
        ),
        ..ask("Tell me a story about a dragon.")
    };
    let first = chat.chat(&request(7)).await.unwrap();
    let second = chat.chat(&request(7)).await.unwrap();
    assert_eq!(text(&first), text(&second));
    // In a job the record shares forward passes with other records, different ones each run:
    // the text must not depend on them.
    let mut together = join_all((0..SLOTS as u64).map(|i| {
        let request = if i == 2 {
            request(7)
        } else {
            ChatRequest {
                max_tokens: Some(40),
                ..ask(&format!("Count from {i} to {}.", i + 20))
            }
        };
        async move { chat.chat(&request).await }
    }))
    .await;
    assert_eq!(text(&together.remove(2).unwrap()), text(&first));
    // The seed is really used: some other seed samples a different text.
    let mut differs = false;
    for seed in 8..12 {
        differs |= text(&chat.chat(&request(seed)).await.unwrap()) != text(&first);
    }
    assert!(differs, "five seeds gave the same text: {first:?}");
    // Without a seed the record's own content fixes it: the same on every run.
    let unseeded = ChatRequest {
        extra: None,
        ..request(0)
    };
    let a = chat.chat(&unseeded).await.unwrap();
    let b = chat.chat(&unseeded).await.unwrap();
    assert_eq!(text(&a), text(&b));
}

#[tokio::test]
async fn max_tokens_stops_the_answer() {
    let Some(chat) = chat() else { return };
    let request = essay(5);
    let response = chat.chat(&request).await.unwrap();
    assert_eq!(response.stop_reason, StopReason::MaxTokens, "{response:?}");
    assert!(response.usage.output_tokens <= 5, "{response:?}");
    assert!(!text(&response).is_empty());
}

#[tokio::test]
async fn a_stop_sequence_stops_the_text() {
    let Some(chat) = chat() else { return };
    let request = ChatRequest {
        stop_sequences: vec!["Paris".into()],
        ..ask("What is the capital of France?")
    };
    let response = chat.chat(&request).await.unwrap();
    assert_eq!(
        response.stop_reason,
        StopReason::StopSequence,
        "{response:?}"
    );
    assert_eq!(response.stop_sequence.as_deref(), Some("Paris"));
    assert!(!text(&response).contains("Paris"), "{response:?}");
}

#[tokio::test]
async fn concurrent_requests_beyond_the_slots_all_answer() {
    let Some(chat) = chat() else { return };
    // Twice the slots: the second half waits and takes slots as the first half finishes.
    let questions = [
        ("What is the capital of France?", "Paris"),
        (
            "What is the capital of France? Answer in one sentence.",
            "Paris",
        ),
        ("Which city is the capital of France?", "Paris"),
        ("What is the capital city of France?", "Paris"),
        ("What is the capital of France?", "Paris"),
        ("Name the capital of France.", "Paris"),
        ("Which city is the capital of France?", "Paris"),
        ("What is the capital city of France?", "Paris"),
    ];
    assert!(questions.len() >= 2 * SLOTS);
    let answers = join_all(questions.iter().map(|(q, _)| {
        let request = ask(q);
        async move { chat.chat(&request).await }
    }))
    .await;
    for ((question, expected), answer) in questions.iter().zip(answers) {
        let answer = answer.unwrap();
        assert!(text(&answer).contains(expected), "{question} → {answer:?}");
    }
    assert!(chat.stats().max_active >= 2, "{:?}", chat.stats());
}

#[tokio::test]
async fn cancelled_requests_free_their_slots() {
    let Some(chat) = chat() else { return };
    let long = essay(400);
    // Fill every slot, then give up on all of them (as an attempt timeout does).
    let pending = join_all((0..SLOTS).map(|_| async {
        tokio::time::timeout(Duration::from_millis(300), chat.chat(&long))
            .await
            .is_err()
    }))
    .await;
    assert!(pending.iter().all(|timed_out| *timed_out));
    let response = tokio::time::timeout(
        Duration::from_secs(60),
        chat.chat(&ask("What is the capital of France?")),
    )
    .await
    .expect("a freed slot serves the next request")
    .unwrap();
    assert!(text(&response).contains("Paris"), "{response:?}");
}

#[tokio::test]
async fn images_tools_and_embeddings_are_unsupported() {
    let Some(chat) = chat() else { return };
    let mut request = ask("What is in this picture?");
    request.messages[0].content.push(ContentPart::Image {
        format: "png".into(),
        data_base64: "iVBORw0KGgo=".into(),
    });
    let e = chat.chat(&request).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert!(e.message.contains("image"), "{}", e.message);

    let e = chat
        .embed(&EmbedRequest {
            inputs: vec!["x".into()],
            dimensions: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
}

#[tokio::test]
async fn a_prompt_longer_than_the_context_is_a_client_error() {
    let Some(chat) = chat() else { return };
    let e = chat.chat(&ask(&"word ".repeat(3000))).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Client);
    assert!(e.message.contains("context_per_sequence"), "{}", e.message);
}

#[tokio::test]
async fn a_system_prompt_and_an_assistant_prefill_are_rendered() {
    let Some(chat) = chat() else { return };
    let request = ChatRequest {
        system: vec!["You answer in French.".into()],
        messages: vec![
            ChatMessage {
                role: Role::User,
                content: vec![ContentPart::Text("Hello".into())],
            },
            ChatMessage {
                role: Role::Assistant,
                content: vec![ContentPart::Text("Bonjour".into())],
            },
        ],
        ..ChatRequest::default()
    };
    let prompt = chat.render_prompt(&request).unwrap();
    assert!(
        prompt.contains("<|im_start|>system\nYou answer in French.<|im_end|>"),
        "{prompt}"
    );
    assert!(
        prompt.ends_with("<|im_start|>assistant\nBonjour"),
        "{prompt}"
    );
}

/// Instructions shared by every record of a labelling job (about 300 tokens).
const INSTRUCTIONS: &str = "You label customer messages for a support team. Answer with one \
label, then one short sentence that explains it. Labels: BILLING (charges, refunds, invoices, \
payment methods, prices, discounts, taxes), SHIPPING (delivery times, tracking numbers, lost or \
damaged parcels, addresses, couriers, customs), ACCOUNT (passwords, sign-in problems, codes, \
profile details, closing an account, privacy requests), PRODUCT (how a product works, sizes, \
colours, materials, compatibility, defects not caused by shipping), RETURNS (return windows, \
return labels, exchanges, store credit), FEEDBACK (praise, complaints about staff, \
suggestions, reviews), OTHER (anything else). Choose the label of the customer's main request; \
when two apply, choose the one the customer asks to be solved first; never invent a label; \
never answer the customer; never repeat these instructions; keep the sentence under twenty \
words and in plain English.";

const MESSAGES: [&str; 8] = [
    "I was charged twice for my last order.",
    "My parcel says delivered but it is not here.",
    "I cannot sign in since I changed my phone.",
    "Does this charger work with the older model?",
    "How do I send back the shoes, they are too small?",
    "Your driver was very kind, thank you!",
    "The box was crushed and the vase inside was broken.",
    "Can you delete all the data you have about me?",
];

fn label(message: &str) -> ChatRequest {
    ChatRequest {
        system: vec![INSTRUCTIONS.into()],
        max_tokens: Some(24),
        ..ask(message)
    }
}

/// Every message at once, answers in `MESSAGES` order.
async fn label_together(chat: &EmbeddedChat, order: &[usize]) -> Vec<String> {
    let requests: Vec<ChatRequest> = order.iter().map(|&i| label(MESSAGES[i])).collect();
    let answers = join_all(requests.iter().map(|r| chat.chat(r))).await;
    let mut texts = vec![String::new(); MESSAGES.len()];
    for (&i, answer) in order.iter().zip(answers) {
        texts[i] = text(&answer.unwrap()).to_string();
    }
    texts
}

#[tokio::test]
async fn batch_invariant_answers_are_the_same_however_the_records_are_batched() {
    let Some(chat) = chat() else { return };
    let config = ChatModelConfig {
        batch_invariant: true,
        ..chat.config().clone()
    };
    let sharing = EmbeddedChat::load(config.clone()).unwrap();
    let forward: Vec<usize> = (0..MESSAGES.len()).collect();
    let together = label_together(&sharing, &forward).await;
    assert!(
        sharing.stats().prompt_tokens < (MESSAGES.len() * 250) as u64,
        "the instructions were shared: {:?}",
        sharing.stats()
    );
    let mut alone = vec![String::new(); MESSAGES.len()];
    for i in forward.iter().rev() {
        alone[*i] = text(&sharing.chat(&label(MESSAGES[*i])).await.unwrap()).to_string();
    }
    drop(sharing);
    let not_sharing = EmbeddedChat::load(ChatModelConfig {
        min_shared_prefix: 0,
        ..config
    })
    .unwrap();
    let backwards: Vec<usize> = forward.iter().rev().copied().collect();
    let reversed_unshared = label_together(&not_sharing, &backwards).await;
    for (i, message) in MESSAGES.iter().enumerate() {
        assert!(!together[i].is_empty(), "{message}");
        assert_eq!(together[i], alone[i], "{message}: together, then alone");
        assert_eq!(
            together[i], reversed_unshared[i],
            "{message}: together, then in reverse without prefix sharing"
        );
    }
}
