//! A mutation fuzzer that needs no compiler support (so it runs on stable Rust, in CI): inputs
//! are drawn by mutating a corpus of valid files with byte edits, splices and replacements of
//! numbers and tokens by the values parsers get wrong (0, -1, 2^32, 2^64, 1e400, "inf", empty).
//! It has no coverage feedback; an input that ends in an error message not seen before joins
//! the corpus, which steers it towards the readers' other branches.

/// SplitMix64: small, fast and deterministic; a campaign is reproduced by its seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

/// Values that readers tend to mishandle, as text.
const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "2",
    "7",
    "255",
    "256",
    "65535",
    "65536",
    "2147483647",
    "2147483648",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "1e400",
    "-1e400",
    "1.5",
    "-0",
    "0.0",
    "1e-400",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "99999999999999999999999999",
    "3.0",
    "00",
    "0x10",
    "",
];

/// Tokens of the formats under test, to insert anywhere.
const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    ",",
    ":",
    "null",
    "true",
    "false",
    "\"\"",
    "[]",
    "{}",
    "\n",
    "\r\n",
    "\"\"\"",
    ",,",
    "\"shape\"",
    "\"dtype\"",
    "\"data_offsets\"",
    "\"F32\"",
    "\"I32\"",
    "\"BOOL\"",
    "\"F64\"",
    "\"__metadata__\"",
    "\"nodes\"",
    "\"outputs\"",
    "\"args\"",
    "\"results\"",
    "\"attrs\"",
    "\"op\"",
    "\"batch\"",
    "\"inf\"",
    "\"-inf\"",
    "\"nan\"",
    "=",
    "[training]",
    "width",
    "heads",
    "experts",
    "top_k",
    "clusters",
    "\u{feff}",
    "\u{0}",
    "é",
    "\u{202e}",
    "\\u0000",
    "\\",
    "#",
    "'",
];

/// One mutated input from `corpus` (not empty). Half the time an input that is JSON, or a
/// safetensors file (whose header is JSON), is mutated as a document (values replaced, keys and
/// elements removed or duplicated), which reaches past the parser into the checks behind it.
pub fn mutate(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut data = corpus[rng.below(corpus.len())].clone();
    if rng.chance(2) {
        if let Some(d) = mutate_structure(rng, &data) {
            return d;
        }
    }
    let edits = 1 + rng.below(4);
    for _ in 0..edits {
        edit(rng, &mut data, corpus);
    }
    data
}

fn mutate_structure(rng: &mut Rng, data: &[u8]) -> Option<Vec<u8>> {
    use serde_json::Value;
    if let Ok(mut doc) = serde_json::from_slice::<Value>(data) {
        for _ in 0..1 + rng.below(3) {
            mutate_json(rng, &mut doc);
        }
        return Some(doc.to_string().into_bytes());
    }
    // safetensors: an 8-byte header length, the JSON header, the data.
    let len = u64::from_le_bytes(data.get(..8)?.try_into().ok()?) as usize;
    let header = data.get(8..8usize.checked_add(len)?)?;
    let mut doc: Value = serde_json::from_slice(header).ok()?;
    for _ in 0..1 + rng.below(3) {
        mutate_json(rng, &mut doc);
    }
    let header = doc.to_string().into_bytes();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    out.extend(&data[8 + len..]);
    Some(out)
}

/// Applies one structural edit to a random node of `doc`.
pub fn mutate_json(rng: &mut Rng, doc: &mut serde_json::Value) {
    let strings = strings_of(doc);
    let count = count_nodes(doc);
    let target = rng.below(count);
    let mut seen = 0;
    edit_node(rng, doc, target, &mut seen, &strings);
}

fn count_nodes(v: &serde_json::Value) -> usize {
    use serde_json::Value;
    1 + match v {
        Value::Array(a) => a.iter().map(count_nodes).sum(),
        Value::Object(o) => o.values().map(count_nodes).sum(),
        _ => 0,
    }
}

fn strings_of(v: &serde_json::Value) -> Vec<String> {
    use serde_json::Value;
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) if out.len() < 512 => out.push(s.clone()),
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            Value::Object(o) => o.iter().for_each(|(k, x)| {
                if out.len() < 512 {
                    out.push(k.clone());
                }
                walk(x, out)
            }),
            _ => {}
        }
    }
    walk(v, &mut out);
    out
}

fn edit_node(rng: &mut Rng, v: &mut serde_json::Value, target: usize, seen: &mut usize, strings: &[String]) -> bool {
    use serde_json::Value;
    if *seen == target {
        replace_node(rng, v, strings);
        return true;
    }
    *seen += 1;
    match v {
        Value::Array(a) => a.iter_mut().any(|x| edit_node(rng, x, target, seen, strings)),
        Value::Object(o) => o.values_mut().any(|x| edit_node(rng, x, target, seen, strings)),
        _ => false,
    }
}

fn replace_node(rng: &mut Rng, v: &mut serde_json::Value, strings: &[String]) {
    use serde_json::{json, Value};
    let edge = || -> Vec<Value> {
        vec![
            json!(0),
            json!(-1),
            json!(1),
            json!(3),
            json!(4294967296u64),
            json!(9223372036854775807i64),
            json!(u64::MAX),
            json!(1.5),
            json!(-0.0),
            json!(1e308),
            json!("inf"),
            json!(""),
            Value::Null,
            json!(true),
            json!([]),
            json!({}),
        ]
    };
    match v {
        Value::Array(a) if !a.is_empty() && rng.chance(2) => {
            let i = rng.below(a.len());
            match rng.below(4) {
                0 => {
                    a.remove(i);
                }
                1 => {
                    let x = a[i].clone();
                    a.insert(i, x);
                }
                2 => {
                    let j = rng.below(a.len());
                    a.swap(i, j);
                }
                _ => a.truncate(i),
            }
        }
        Value::Object(o) if !o.is_empty() && rng.chance(2) => {
            let keys: Vec<String> = o.keys().cloned().collect();
            let k = &keys[rng.below(keys.len())];
            match rng.below(3) {
                0 => {
                    o.remove(k);
                }
                1 => {
                    let x = o[k].clone();
                    o.insert(format!("{k}_"), x);
                }
                _ => {
                    let e = edge();
                    o.insert(k.clone(), e[rng.below(e.len())].clone());
                }
            }
        }
        Value::String(s) if !strings.is_empty() && rng.chance(2) => *s = strings[rng.below(strings.len())].clone(),
        Value::Number(n) if rng.chance(3) => {
            // Off by one, or scaled: near-valid sizes and indices.
            let x = n.as_f64().unwrap_or(0.0);
            *v = json!([x + 1.0, x - 1.0, x * 2.0, x * 1000.0][rng.below(4)] as i64);
        }
        _ => {
            let e = edge();
            *v = e[rng.below(e.len())].clone();
        }
    }
}

fn edit(rng: &mut Rng, data: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    let len = data.len();
    match rng.below(9) {
        // Flip a bit.
        0 if len > 0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        // Set a byte to an edge value.
        1 if len > 0 => {
            let i = rng.below(len);
            data[i] = [0u8, 0xff, 0x7f, 0x80, b'0', b'9', b'"', b'\n'][rng.below(8)];
        }
        // Delete a range.
        2 if len > 0 => {
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(64));
            data.drain(at..at + n);
        }
        // Duplicate a range.
        3 if len > 0 => {
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(256));
            let copy = data[at..at + n].to_vec();
            let to = rng.below(data.len() + 1);
            data.splice(to..to, copy);
        }
        // Splice in part of another input.
        4 => {
            let other = &corpus[rng.below(corpus.len())];
            if !other.is_empty() {
                let at = rng.below(other.len());
                let n = 1 + rng.below((other.len() - at).min(512));
                let to = rng.below(data.len() + 1);
                data.splice(to..to, other[at..at + n].iter().copied());
            }
        }
        // Insert a token.
        5 => {
            let t = TOKENS[rng.below(TOKENS.len())].as_bytes();
            let to = rng.below(data.len() + 1);
            data.splice(to..to, t.iter().copied());
        }
        // Replace a number by an edge value.
        6 | 7 => {
            let numbers = number_spans(data);
            if !numbers.is_empty() {
                let (a, b) = numbers[rng.below(numbers.len())];
                let v = NUMBERS[rng.below(NUMBERS.len())].as_bytes();
                data.splice(a..b, v.iter().copied());
            }
        }
        // Truncate, or rewrite a little-endian u64 header length (safetensors).
        _ => {
            if len >= 8 && rng.chance(2) {
                let v = [0u64, 1, 7, u64::MAX, (len as u64).wrapping_sub(7), len as u64 * 2, 1 << 40][rng.below(7)];
                data[..8].copy_from_slice(&v.to_le_bytes());
            } else if len > 0 {
                data.truncate(rng.below(len));
            }
        }
    }
}

/// Byte ranges of the decimal numbers in `data` (digits with an optional sign, point, exponent).
fn number_spans(data: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut i = 0;
    while i < data.len() {
        if data[i].is_ascii_digit() {
            let start = if i > 0 && data[i - 1] == b'-' { i - 1 } else { i };
            while i < data.len() && (data[i].is_ascii_digit() || matches!(data[i], b'.' | b'e' | b'E' | b'+' | b'-')) {
                i += 1;
            }
            spans.push((start, i));
        } else {
            i += 1;
        }
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_found_and_mutation_is_deterministic() {
        assert_eq!(number_spans(b"[12, -3.5e2]"), vec![(1, 3), (5, 11)]);
        let corpus = vec![b"{\"a\": [1, 2]}".to_vec()];
        let (mut a, mut b) = (Rng::new(9), Rng::new(9));
        let xs: Vec<_> = (0..50).map(|_| mutate(&mut a, &corpus)).collect();
        let ys: Vec<_> = (0..50).map(|_| mutate(&mut b, &corpus)).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().any(|x| x != &corpus[0]), "mutations change the input");
        // Structural edits keep most JSON documents JSON.
        let json_ok = xs.iter().filter(|x| serde_json::from_slice::<serde_json::Value>(x).is_ok()).count();
        assert!(json_ok > 10, "{json_ok} of 50 still parse");
    }
}
