//! CORS: off unless `--cors-origin` lists origins. A listed origin gets its own
//! name back in `Access-Control-Allow-Origin` (never `*`), with credentials
//! allowed, on preflights and on actual responses (streams included); any other
//! origin gets no CORS header, so the browser refuses the response, and its
//! preflight is answered `403`.

/// The request's origin if it is allowed.
pub fn allowed<'a>(origins: &[String], origin: Option<&'a str>) -> Option<&'a str> {
    let origin = origin?;
    origins.iter().any(|o| o == origin).then_some(origin)
}

/// Methods and request headers a preflight may ask for.
pub const ALLOW_METHODS: &str = "GET, POST, OPTIONS";
pub const ALLOW_HEADERS: &str =
    "Authorization, Content-Type, Last-Event-ID, Cache-Control, Idempotency-Key";
/// How long a browser may cache a preflight answer (seconds).
pub const MAX_AGE: &str = "600";

/// The CORS header lines of a response to an allowed `origin`, in HTTP/1.1 text
/// (for the lean stream's hand-written head).
pub fn head_lines(origin: &str) -> String {
    format!(
        "access-control-allow-origin: {origin}\r\naccess-control-allow-credentials: true\r\nvary: origin\r\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_origins_pass() {
        let list = vec!["https://app.example.com".to_string()];
        assert_eq!(
            allowed(&list, Some("https://app.example.com")),
            Some("https://app.example.com")
        );
        assert_eq!(allowed(&list, Some("https://evil.example.com")), None);
        assert_eq!(
            allowed(&list, Some("https://app.example.com.evil.com")),
            None
        );
        assert_eq!(allowed(&list, None), None);
        assert_eq!(allowed(&[], Some("https://app.example.com")), None);
    }
}
