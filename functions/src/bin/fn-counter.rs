//! `fn-counter`: a stateful worker. Keeps a counter in memory and returns its new value
//! (decimal) for each request. Payload `fail` answers a function error instead; payload
//! `exit` makes the worker exit (to test crash reporting).

fn main() {
    let mut counter: u64 = 0;
    std::process::exit(husk_functions::run(move |p| match p {
        b"fail" => Err(b"asked to fail".to_vec()),
        b"exit" => std::process::exit(3),
        _ => {
            counter += 1;
            eprintln!("counter at {counter}");
            Ok(counter.to_string().into_bytes())
        }
    }));
}
