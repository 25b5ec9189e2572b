//! temporary
#[cfg(test)]
mod tests {
    use crate::openai::request::{ChatCompletionRequest, parse};
    use crate::preprocess::Preprocessor;
    use std::time::Instant;

    #[test]
    #[ignore]
    fn probe() {
        let p = Preprocessor::load(switchyard_model::DEFAULT_SOURCE).unwrap();
        let words = "The quick brown fox jumps over the lazy dog while the cat watches from the window and thinks about dinner. ".repeat(12);
        let body = serde_json::json!({"model":"tiny","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":words}],"max_tokens":100,"stream":true}).to_string();
        let req: ChatCompletionRequest = parse(body.as_bytes()).unwrap();
        let prompt = p
            .render_chat(req.messages.as_deref().unwrap(), None, None)
            .unwrap();
        let ids = p.encode(&prompt, false).unwrap();
        println!("prompt tokens {}", ids.len());
        let n = 3000;
        let t = Instant::now();
        for _ in 0..n {
            let r: ChatCompletionRequest = parse(body.as_bytes()).unwrap();
            std::hint::black_box(r);
        }
        println!("parse {:?}", t.elapsed() / n);
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(
                p.render_chat(req.messages.as_deref().unwrap(), None, None)
                    .unwrap(),
            );
        }
        println!("render {:?}", t.elapsed() / n);
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(p.encode(&prompt, false).unwrap());
        }
        println!("encode {:?}", t.elapsed() / n);
        let tok = tokenizers::Tokenizer::from_bytes(
            &switchyard_model::ModelFiles::resolve("builtin:tiny")
                .unwrap()
                .tokenizer_json,
        )
        .unwrap();
        use tokenizers::PreTokenizer;
        let pt = tok.get_pre_tokenizer().unwrap();
        let t = Instant::now();
        for _ in 0..n {
            let mut ps = tokenizers::PreTokenizedString::from(prompt.as_str());
            pt.pre_tokenize(&mut ps).unwrap();
            std::hint::black_box(ps);
        }
        println!("pretokenize {:?}", t.elapsed() / n);
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(tok.encode_fast(words.as_str(), false).unwrap());
        }
        println!("encode words only (no specials) {:?}", t.elapsed() / n);
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(tok.encode(prompt.as_str(), false).unwrap());
        }
        println!("encode (offsets) {:?}", t.elapsed() / n);
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(switchyard_router::block_hashes(&ids, 16));
        }
        println!("hashes {:?}", t.elapsed() / n);
        let out_ids = p.encode(&words[..500], false).unwrap();
        let t = Instant::now();
        for _ in 0..n {
            let mut d = p.detokenizer();
            let mut s = String::new();
            for &id in &out_ids {
                d.push(id, &mut s);
            }
            std::hint::black_box(s);
        }
        println!("detok {} tokens {:?}", out_ids.len(), t.elapsed() / n);
    }
}
