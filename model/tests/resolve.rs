//! Resolution of the builtin model, local directories and the HF cache, and parsing of the
//! shapes config files take in the wild.

// A failed unwrap is a failed test, with the value in the message.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use switchyard_model::{DEFAULT_SOURCE, Error, ModelFiles};
use tokenizers::Tokenizer;

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn builtin() -> ModelFiles {
    ModelFiles::resolve(DEFAULT_SOURCE).unwrap()
}

#[test]
fn builtin_resolves_with_config() {
    let m = builtin();
    assert_eq!(m.source, "builtin:tiny");
    assert!(m.dir.is_none() && m.is_builtin());
    assert_eq!(m.config.vocab_size, Some(2048));
    assert_eq!(m.config.max_position_embeddings, Some(2048));
    assert_eq!(m.config.eos_token_ids, vec![2, 0]);
    assert_eq!(m.config.bos_token_id, None);
    assert_eq!(m.tokenizer_config.eos_token.as_deref(), Some("<|im_end|>"));
    assert_eq!(m.tokenizer_config.bos_token, None);
    assert!(!m.tokenizer_config.add_bos_token);
    assert_eq!(m.tokenizer_config.model_max_length, Some(2048));
    assert_eq!(m.context_length(), Some(2048));
}

#[test]
fn builtin_tokenizer_loads_and_round_trips() {
    let m = builtin();
    let tok = Tokenizer::from_bytes(&m.tokenizer_json).unwrap();
    assert_eq!(tok.get_vocab_size(true), 2048);
    assert_eq!(tok.token_to_id("<|endoftext|>"), Some(0));
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
    let eos = m.tokenizer_config.eos_token.as_deref().unwrap();
    assert_eq!(tok.token_to_id(eos), Some(m.config.eos_token_ids[0]));

    for text in [
        "Hello, world! The quick brown fox jumps over the lazy dog.",
        "def f(x):\n    return x ** 2  # 平方 ünïcödé 🚀\n\n\ttabs",
        "  leading and trailing spaces  ",
        "",
    ] {
        let enc = tok.encode(text, true).unwrap();
        assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), text);
    }
    // Trained on Python docs, so common words are single tokens, far fewer tokens than bytes.
    let text = "The return statement leaves the current function call.";
    let n = tok.encode(text, true).unwrap().len();
    assert!(n < text.len() / 2, "{n} tokens");

    // Special tokens in text map to their ids, and are skipped when decoding without specials.
    let enc = tok.encode("<|im_start|>user\nhi<|im_end|>", true).unwrap();
    assert_eq!(enc.get_ids().first(), Some(&1));
    assert_eq!(enc.get_ids().last(), Some(&2));
    assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), "user\nhi");
}

#[test]
fn builtin_chat_template_renders_chatml() {
    let m = builtin();
    let template = m.tokenizer_config.chat_template.clone().unwrap();
    let mut env = minijinja::Environment::new();
    env.add_template("chat", &template).unwrap();
    let t = env.get_template("chat").unwrap();
    let messages = serde_json_value(
        r#"[{"role":"system","content":"Be brief."},
            {"role":"user","content":[{"type":"text","text":"Hi"},{"type":"image_url","image_url":{"url":"x"}}]},
            {"role":"assistant","content":null},
            {"role":"user","content":"Again"}]"#,
    );
    let out = t
        .render(minijinja::context! { messages => messages, add_generation_prompt => true })
        .unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
         <|im_start|>assistant\n<|im_end|>\n<|im_start|>user\nAgain<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    let out = t
        .render(minijinja::context! {
            messages => serde_json_value(r#"[{"role":"user","content":"x"}]"#),
            add_generation_prompt => false,
        })
        .unwrap();
    assert_eq!(out, "<|im_start|>user\nx<|im_end|>\n");
}

fn serde_json_value(s: &str) -> minijinja::Value {
    let v: serde_json::Value = serde_json::from_str(s).unwrap();
    minijinja::Value::from_serialize(&v)
}

#[test]
fn materialized_builtin_resolves_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let m = builtin();
    m.materialize(tmp.path()).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json", "config.json", "generation_config.json"] {
        assert!(tmp.path().join(f).is_file(), "{f}");
    }
    let d = ModelFiles::resolve(tmp.path().to_str().unwrap()).unwrap();
    assert_eq!(d.dir.as_deref(), Some(tmp.path()));
    assert_eq!(d.source, tmp.path().to_str().unwrap());
    assert_eq!(d.tokenizer_json, m.tokenizer_json);
    assert_eq!(d.tokenizer_config.chat_template, m.tokenizer_config.chat_template);
    assert_eq!(d.tokenizer_config.eos_token, m.tokenizer_config.eos_token);
    assert_eq!(d.config.eos_token_ids, m.config.eos_token_ids);
    assert_eq!(d.context_length(), m.context_length());

    // Materializing a directory-sourced model copies the metadata files along.
    let tmp2 = tempfile::tempdir().unwrap();
    let out = tmp2.path().join("nested/copy");
    d.materialize(&out).unwrap();
    let e = ModelFiles::from_dir(&out).unwrap();
    assert_eq!(e.tokenizer_json, m.tokenizer_json);
    assert_eq!(e.config.eos_token_ids, m.config.eos_token_ids);
    // No temporary files left behind.
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 4);
}

#[test]
fn hf_cache_layout_resolves() {
    let hub = tempfile::tempdir().unwrap();
    let repo = hub.path().join("models--Org--Tiny-1.5B");
    let old = repo.join("snapshots/1111");
    let main = repo.join("snapshots/2222");
    std::fs::create_dir_all(&old).unwrap();
    builtin().materialize(&main).unwrap();
    write(&old, "tokenizer.json", "{}");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    write(&repo.join("refs"), "main", "2222\n");

    let m = ModelFiles::resolve_with_hub("Org/Tiny-1.5B", Some(hub.path())).unwrap();
    assert_eq!(m.source, "Org/Tiny-1.5B");
    assert_eq!(m.dir.as_deref(), Some(main.as_path()));
    assert_eq!(m.context_length(), Some(2048));

    // Without refs/main the newest snapshot is picked.
    std::fs::remove_file(repo.join("refs/main")).unwrap();
    let newest = repo.join("snapshots/3333");
    std::thread::sleep(std::time::Duration::from_millis(20));
    builtin().materialize(&newest).unwrap();
    let m = ModelFiles::resolve_with_hub("Org/Tiny-1.5B", Some(hub.path())).unwrap();
    assert_eq!(m.dir.as_deref(), Some(newest.as_path()));

    // A repo not in the cache names where it looked.
    let err = ModelFiles::resolve_with_hub("Org/Other", Some(hub.path())).unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("models--Org--Other"), "{err}");
}

#[test]
fn eos_token_object_and_id_list_parse() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write(d, "tokenizer.json", "{}");
    write(
        d,
        "tokenizer_config.json",
        r#"{"bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": false},
            "eos_token": {"content": "</s>", "special": true},
            "add_bos_token": true,
            "model_max_length": 1000000000000000019884624838656,
            "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}"#,
    );
    write(
        d,
        "config.json",
        r#"{"eos_token_id": [128001, 128008, 128009], "bos_token_id": 128000, "vocab_size": 128256}"#,
    );
    write(d, "generation_config.json", r#"{"eos_token_id": [128009, 7], "bos_token_id": 5}"#);
    let m = ModelFiles::from_dir(d).unwrap();
    let t = &m.tokenizer_config;
    assert_eq!(t.bos_token.as_deref(), Some("<s>"));
    assert_eq!(t.eos_token.as_deref(), Some("</s>"));
    assert!(t.add_bos_token);
    assert_eq!(t.model_max_length, None);
    assert_eq!(t.chat_template.as_deref(), Some("D"));
    assert_eq!(m.config.eos_token_ids, vec![128001, 128008, 128009, 7]);
    assert_eq!(m.config.bos_token_id, Some(128000));
    assert_eq!(m.config.vocab_size, Some(128256));
    assert_eq!(m.context_length(), None);
}

#[test]
fn separate_template_file_and_nested_text_config() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write(d, "tokenizer.json", "{}");
    write(d, "tokenizer_config.json", r#"{"chat_template": "old", "model_max_length": 4096}"#);
    write(d, "chat_template.jinja", "{{ messages }}");
    write(
        d,
        "config.json",
        r#"{"text_config": {"max_position_embeddings": 32768, "eos_token_id": 1}}"#,
    );
    let m = ModelFiles::from_dir(d).unwrap();
    assert_eq!(m.tokenizer_config.chat_template.as_deref(), Some("{{ messages }}"));
    assert_eq!(m.context_length(), Some(32768));
    assert_eq!(m.config.eos_token_ids, vec![1]);

    // chat_template.json (processor style) when there is no .jinja file.
    std::fs::remove_file(d.join("chat_template.jinja")).unwrap();
    write(d, "chat_template.json", r#"{"chat_template": "J"}"#);
    write(d, "config.json", "{}");
    let m = ModelFiles::from_dir(d).unwrap();
    assert_eq!(m.tokenizer_config.chat_template.as_deref(), Some("J"));
    assert_eq!(m.context_length(), Some(4096));
}

#[test]
fn only_tokenizer_json_is_required() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "tokenizer.json", "{}");
    let m = ModelFiles::from_dir(tmp.path()).unwrap();
    assert_eq!(m.tokenizer_config.chat_template, None);
    assert!(m.config.eos_token_ids.is_empty());
    assert_eq!(m.context_length(), None);
}

#[test]
fn missing_things_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-model");
    let err = ModelFiles::resolve(missing.to_str().unwrap()).unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }));
    let msg = err.to_string();
    assert!(msg.contains(missing.to_str().unwrap()) && msg.contains("builtin:tiny"), "{msg}");

    // A directory without tokenizer.json names the file it wanted.
    let err = ModelFiles::resolve(tmp.path().to_str().unwrap()).unwrap_err();
    let want = tmp.path().join("tokenizer.json");
    assert!(matches!(&err, Error::MissingFile { path } if *path == want), "{err}");
    assert!(err.to_string().contains(want.to_str().unwrap()));

    let err = ModelFiles::resolve("builtin:huge").unwrap_err();
    assert_eq!(err.to_string(), "unknown builtin model `huge` (known: tiny)");

    write(tmp.path(), "tokenizer.json", "{}");
    let err = ModelFiles::resolve(tmp.path().join("tokenizer.json").to_str().unwrap()).unwrap_err();
    assert!(matches!(err, Error::NotADirectory { .. }), "{err}");

    write(tmp.path(), "config.json", "{not json");
    let err = ModelFiles::from_dir(tmp.path()).unwrap_err();
    assert!(matches!(err, Error::Json { .. }));
    assert!(err.to_string().contains("config.json: invalid JSON"), "{err}");

    write(tmp.path(), "config.json", r#"{"eos_token_id": "two"}"#);
    let err = ModelFiles::from_dir(tmp.path()).unwrap_err();
    assert!(err.to_string().contains("`eos_token_id`"), "{err}");

    let err = ModelFiles::resolve("").unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }));
}
