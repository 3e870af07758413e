//! The one envelope of `--json` event streams (README, "JSON output"): one object per line, its
//! kind in `event` (snake_case), the host it is about in `host`, times as integer milliseconds in
//! fields ending in `_ms`. Deploy's and install's typed events serialise to the same shape.

/// One event line: `{"event": EVENT, "host": HOST, …fields of body}` (`body` is an object, or
/// anything else serialisable to one; other values add nothing).
pub fn event(event: &str, host: &str, body: impl serde::Serialize) -> serde_json::Value {
    let mut line = match serde_json::to_value(body) {
        Ok(serde_json::Value::Object(fields)) => fields,
        _ => serde_json::Map::new(),
    };
    line.insert("event".into(), event.into());
    line.insert("host".into(), host.into());
    serde_json::Value::Object(line)
}

/// Prints one event line to stdout.
pub fn emit(event_name: &str, host: &str, body: impl serde::Serialize) {
    println!("{}", event(event_name, host, body));
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_envelope_wins_over_the_body() {
        let line = super::event(
            "step",
            "host1",
            serde_json::json!({"index": 1, "command_ms": 5, "host": "other"}),
        );
        assert_eq!(
            line,
            serde_json::json!({"event": "step", "host": "host1", "index": 1, "command_ms": 5})
        );
    }
}
