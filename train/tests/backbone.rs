//! The backbone: the real all-MiniLM-L6-v2 (when `scripts/fetch-minilm` has installed it;
//! `scripts/test` does and sets CALM_REQUIRE_MINILM so it cannot be skipped in CI), and the
//! tiny random BERT through the same tokenizer, encoder and cache code.

use calm_train::backbone::{minilm_dir, Encoder, States};
use calm_train::progress::Progress;

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

fn minilm() -> Option<Encoder> {
    match Encoder::minilm(&minilm_dir()) {
        Ok(e) => Some(e),
        Err(e) if std::env::var_os("CALM_REQUIRE_MINILM").is_some() => panic!("{e}"),
        Err(e) => {
            eprintln!("SKIPPED (set CALM_REQUIRE_MINILM to fail instead): {e}");
            None
        }
    }
}

#[test]
fn minilm_is_the_real_model() {
    let Some(enc) = minilm() else { return };
    let texts: Vec<String> = [
        "A man is playing a guitar.",
        "Someone is playing an acoustic guitar.",
        "The stock market fell sharply today.",
        "Share prices dropped steeply this afternoon.",
        "I love eating fresh strawberries in summer.",
        "Strawberries are my favourite summer fruit.",
    ]
    .map(String::from)
    .to_vec();
    // BERT uncased WordPiece: [CLS] = 101, [SEP] = 102.
    let ids = enc.tokenize(&texts[..1], 64).unwrap();
    assert_eq!(ids[0], [101, 1037, 2158, 2003, 2652, 1037, 2858, 1012, 102]);
    let e = enc.embed(&texts, 64).unwrap();
    for v in &e {
        assert!((cosine(v, v) - 1.0).abs() < 1e-5);
    }
    // Each paraphrase pair is closer than any sentence to the other pairs' sentences.
    for pair in 0..3 {
        let (a, b) = (2 * pair, 2 * pair + 1);
        let same = cosine(&e[a], &e[b]);
        for other in (0..6).filter(|&o| o / 2 != pair) {
            assert!(same > cosine(&e[a], &e[other]) + 0.2, "pair {pair}: {same} vs {}", cosine(&e[a], &e[other]));
        }
        assert!(same > 0.6, "pair {pair}: {same}");
    }
    // Pinned: the first values of the first sentence's embedding, as this code computed them
    // (f32 on Burn Flex); an independent NumPy BERT forward over the same checkpoint and ids
    // gave [0.02166407, -0.00486422, -0.00964909, -0.06340124, -0.16749352, 0.00467642].
    let pinned = [0.02166415, -0.0048641306, -0.009649104, -0.0634013, -0.16749346, 0.004676372];
    for (got, want) in e[0].iter().zip(pinned) {
        assert!((got - want).abs() < 1e-4, "{:?}", &e[0][..6]);
    }
}

#[test]
fn tiny_encoder_states_are_cached_and_read_back() {
    let enc = Encoder::tiny(3);
    // Character pieces: "hi yo" is [CLS] h ##i y ##o [SEP]; the second is cut at 8.
    let texts: Vec<String> = ["Hi yo", "a longer text, with punctuation!", "x"].map(String::from).to_vec();
    let ids = enc.tokenize(&texts, 8).unwrap();
    assert_eq!(ids[0], [2, 18, 21, 52, 33, 3]);
    assert_eq!(ids.iter().map(Vec::len).collect::<Vec<_>>(), [6, 8, 3], "{ids:?}");
    let dir = tempfile::tempdir().unwrap();
    let s = enc.cached_states(&texts, 8, dir.path(), &Progress::hidden()).unwrap();
    assert_eq!((s.width, s.tokens, s.lengths.clone()), (24, 8, vec![6, 8, 3]));
    // Padding positions are zeros; real ones are not.
    assert!(s.token(2, 3).iter().all(|&x| x == 0.0));
    assert!(s.token(2, 2).iter().any(|&x| x != 0.0));
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1);
    assert_eq!(States::load(&files[0]).unwrap(), s);
    // A second call reads the cache (same values), a batch of one text gives the same states
    // for it as the batch of three (padding does not leak into real tokens).
    assert_eq!(enc.cached_states(&texts, 8, dir.path(), &Progress::hidden()).unwrap(), s);
    let alone = enc.encode(&texts[..1], 8, &Progress::hidden()).unwrap();
    for (a, b) in alone.token(0, 1).iter().zip(s.token(0, 1)) {
        assert!((a - b).abs() < 1e-5);
    }
}
