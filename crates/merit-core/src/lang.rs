//! Languages Merit can identify, by ISO 639-1 code.

/// ISO 639-1 codes of the languages the language gate identifies.
pub const SUPPORTED: &[&str] = &[
    "af", "ak", "am", "ar", "az", "be", "bg", "bn", "ca", "cs", "da", "de", "el", "en", "eo", "es", "et", "fa", "fi",
    "fr", "gu", "he", "hi", "hr", "hu", "hy", "id", "it", "ja", "jv", "ka", "km", "kn", "ko", "la", "lt", "lv", "mk",
    "ml", "mr", "my", "nb", "ne", "nl", "or", "pa", "pl", "pt", "ro", "ru", "si", "sk", "sl", "sn", "sr", "sv", "ta",
    "te", "th", "tk", "tl", "tr", "uk", "ur", "uz", "vi", "yi", "zh", "zu",
];

/// Whether `code` is a language the gate can identify.
pub fn is_supported(code: &str) -> bool {
    SUPPORTED.contains(&code)
}
