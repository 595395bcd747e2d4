//! `fn-meta`: reports the invocation's metadata, in exec or worker mode. The body is
//! `request_id=ID\ndeadline_unix_ms=MS\n` followed by `NAME=VALUE\n` for each variable
//! named in the payload (whitespace-separated; `NAME=` when unset), read from the
//! request header (worker) or the process environment (exec).

fn report(meta: &husk_functions::RequestMeta, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "request_id={}\ndeadline_unix_ms={}\n",
        meta.request_id, meta.deadline_unix_ms
    );
    for name in String::from_utf8_lossy(payload).split_whitespace() {
        let value = if husk_functions::worker_mode() {
            meta.env_var(name).map(str::to_string)
        } else {
            std::env::var(name).ok()
        };
        out.push_str(&format!("{name}={}\n", value.unwrap_or_default()));
    }
    out.into_bytes()
}

fn main() {
    std::process::exit(husk_functions::run_with_meta(|m, p| Ok(report(m, p))));
}
