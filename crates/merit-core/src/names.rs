//! Names of users and datanets: 1 to 64 characters, lowercase ASCII letters,
//! digits, `-`, `_` and `.`, starting with a letter or digit.

/// Checks a user or datanet name; the error says what is wrong.
pub fn check(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("{what} name must be 1 to 64 characters, got {}", name.len()));
    }
    let first_ok = name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let all_ok = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if !first_ok || !all_ok {
        return Err(format!(
            "{what} name `{name}` may hold only lowercase letters, digits, '-', '_' and '.', and must start with a letter or digit"
        ));
    }
    Ok(())
}

/// Checks a datanet's tags: at most 16, each 1 to 32 characters of lowercase
/// letters, digits and `-`, no repeats.
pub fn check_tags(tags: &[String]) -> Result<(), String> {
    if tags.len() > 16 {
        return Err(format!("at most 16 tags, got {}", tags.len()));
    }
    for (i, t) in tags.iter().enumerate() {
        let ok = !t.is_empty() && t.len() <= 32 && t.chars().all(|c| c.is_lowercase() || c.is_numeric() || c == '-');
        if !ok {
            return Err(format!("tag `{t}` must be 1 to 32 lowercase letters, digits or '-'"));
        }
        if tags[..i].contains(t) {
            return Err(format!("tag `{t}` is repeated"));
        }
    }
    Ok(())
}

/// Checks a datanet's summary (one line, at most 280 characters) and
/// description (markdown, at most 64 KiB).
pub fn check_texts(summary: &str, description: &str) -> Result<(), String> {
    if summary.chars().count() > 280 || summary.contains('\n') {
        return Err("summary must be one line of at most 280 characters".to_string());
    }
    if description.len() > 65_536 {
        return Err(format!("description must be at most 65536 bytes, got {}", description.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn names() {
        assert!(super::check("datanet", "medical-qa_v2.1").is_ok());
        for bad in ["", "Upper", "-x", "a b", "x/y", &"a".repeat(65)] {
            assert!(super::check("datanet", bad).is_err(), "{bad}");
        }
        assert!(super::check_tags(&["nlp".into(), "q-a".into()]).is_ok());
        assert!(super::check_tags(&["NLP".into()]).is_err());
        assert!(super::check_tags(&["a".into(), "a".into()]).is_err());
        assert!(super::check_texts("one line", "# md").is_ok());
        assert!(super::check_texts("two\nlines", "").is_err());
    }
}
