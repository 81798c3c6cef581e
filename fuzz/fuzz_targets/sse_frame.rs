//! The SSE framer: for any id, event name and data, the frame is well formed
//! (field lines only, LF line ends, one blank line at the end) and its data lines,
//! read back as a WHATWG parser does, are the data with CR/CRLF read as LF.
#![no_main]
use herald::sse::frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u64, &str, &str)| {
    let (id, name, data) = input;
    // Event names are validated before framing; data is anything.
    let name = if !name.is_empty() && !name.contains(['\r', '\n']) { name } else { "message" };
    let bytes = frame::event(id, name, data);
    let text = std::str::from_utf8(&bytes).expect("frames are UTF-8");
    assert!(text.ends_with("\n\n"));
    assert!(!text.contains('\r'));
    let body = &text[..text.len() - 1]; // drop the dispatching blank line
    let mut lines = body.split_terminator('\n');
    assert_eq!(lines.next(), Some(format!("id: {id}").as_str()));
    assert_eq!(lines.next(), Some(format!("event: {name}").as_str()));
    let mut got = String::new();
    let mut n = 0;
    for line in lines {
        let value = line.strip_prefix("data:").expect("only data lines follow");
        let value = value.strip_prefix(' ').unwrap_or(value);
        if n > 0 {
            got.push('\n');
        }
        got.push_str(value);
        n += 1;
    }
    assert!(n >= 1, "at least one data line");
    assert_eq!(got, data.replace("\r\n", "\n").replace('\r', "\n"));
});
