//! Merit's web-text rule families against datatrove's own filters, document
//! by document (scripts/datatrove_diff.sh gathers the documents and runs
//! datatrove; this prints the agreement per family).
//!
//!     cargo run -p merit-gate --example datatrove_diff -- CORPUS.jsonl \
//!         [--min-agreement 0.99] [--min FAMILY=RATE ...] [--show 5]
//!
//! Exits with 1 when a family agrees on fewer documents than its minimum
//! (`--min FAMILY=RATE` sets one family's, `--min-agreement` the others').

use std::io::BufRead;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!("usage: datatrove_diff CORPUS.jsonl [--min-agreement 0.99] [--show N]");
        std::process::exit(2);
    };
    if args[1] == "--tokens" {
        // Merit's word tokens of a file, one a line (to diff with spaCy's).
        let text = std::fs::read_to_string(args.get(2).map(String::as_str).unwrap_or_default()).unwrap_or_default();
        for t in merit_gate::word_tokens(&text) {
            println!("{t}");
        }
        return;
    }
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1));
    let min_agreement: f64 = flag("--min-agreement").and_then(|v| v.parse().ok()).unwrap_or(0.99);
    let show: usize = flag("--show").and_then(|v| v.parse().ok()).unwrap_or(5);
    let mut floors = std::collections::HashMap::new();
    for (i, a) in args.iter().enumerate() {
        if a == "--min" {
            let spec = args.get(i + 1).map(String::as_str).unwrap_or_default();
            let Some((family, rate)) = spec.split_once('=').and_then(|(f, r)| Some((f, r.parse::<f64>().ok()?))) else {
                eprintln!("--min takes FAMILY=RATE, such as gopher_quality=0.95; got `{spec}`");
                std::process::exit(2);
            };
            floors.insert(family.to_string(), rate);
        }
    }
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{path}: {e}");
            std::process::exit(2);
        }
    };
    // Per family: agree, Merit rejects what datatrove keeps, Merit keeps what datatrove rejects.
    let families = merit_gate::WEB_TEXT_FAMILIES;
    let mut tally = [[0usize; 3]; 4];
    let mut examples: Vec<Vec<String>> = vec![Vec::new(); 4];
    let mut docs = 0;
    let (mut same_words, mut word_docs) = (0usize, 0usize);
    let mut word_examples = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.unwrap_or_else(|e| panic!("{path}: line {}: {e}", n + 1));
        let doc: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{path}: line {}: {e}", n + 1));
        let text = doc["text"].as_str().unwrap_or_default();
        docs += 1;
        if let Some(theirs) = doc["words"].as_array() {
            word_docs += 1;
            let ours = merit_gate::word_tokens(text);
            let first_diff = (0..ours.len().max(theirs.len()))
                .find(|&i| ours.get(i).copied() != theirs.get(i).and_then(|w| w.as_str()));
            match first_diff {
                None => same_words += 1,
                Some(i) if word_examples.len() < show => word_examples.push(format!(
                    "  {} ({}): token {i}: merit {:?}, datatrove {:?}",
                    doc["id"],
                    doc["source"],
                    &ours[i.saturating_sub(2)..(i + 3).min(ours.len())],
                    &theirs[i.saturating_sub(2)..(i + 3).min(theirs.len())]
                )),
                Some(_) => {}
            }
        }
        for (f, family) in families.iter().enumerate() {
            let Some(theirs) = doc["datatrove"][family].as_bool() else { continue };
            let ours = merit_gate::family_verdict(text, family);
            let k = match (ours.is_none(), theirs) {
                (a, b) if a == b => 0,
                (false, true) => 1,
                _ => 2,
            };
            tally[f][k] += 1;
            if k != 0 && examples[f].len() < show {
                let why = ours.map(|r| format!("{}/{} {}", r.gate, r.metric, r.value)).unwrap_or_else(|| "pass".into());
                let verdict = if theirs { "keeps" } else { "drops" };
                examples[f].push(format!("  {} ({}): merit {why}, datatrove {verdict}", doc["id"], doc["source"]));
            }
        }
    }
    println!("{docs} documents; agreement with datatrove 0.10 (default settings) per family:");
    println!("{:<18} {:>9} {:>22} {:>22}", "family", "agree", "merit drops, dt keeps", "merit keeps, dt drops");
    if word_docs > 0 {
        println!(
            "word tokens identical to datatrove's (spaCy's) in {same_words} of {word_docs} documents ({:.2}%)",
            100.0 * same_words as f64 / word_docs as f64
        );
        for e in &word_examples {
            println!("{e}");
        }
    }
    let mut ok = true;
    for (f, family) in families.iter().enumerate() {
        let [agree, ours_stricter, theirs_stricter] = tally[f];
        let total = (agree + ours_stricter + theirs_stricter).max(1);
        let rate = agree as f64 / total as f64;
        let floor = floors.get(*family).copied().unwrap_or(min_agreement);
        let below = rate < floor;
        ok &= !below;
        let mark = if below { format!("  below {:.1}%", 100.0 * floor) } else { String::new() };
        println!("{family:<18} {:>8.2}% {ours_stricter:>22} {theirs_stricter:>22}{mark}", 100.0 * rate);
    }
    for (f, family) in families.iter().enumerate() {
        if !examples[f].is_empty() {
            println!("{family}, first disagreements:");
            for e in &examples[f] {
                println!("{e}");
            }
        }
    }
    if !ok {
        println!("a family agrees with datatrove on fewer documents than its minimum");
        std::process::exit(1);
    }
}
