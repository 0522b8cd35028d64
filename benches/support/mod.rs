//! What both benchmarks serve.

use bytes::Bytes;

/// About 2 KB of JSON: a page of users.
pub fn json_body() -> Bytes {
    let users: Vec<String> = (1..=24)
        .map(|id| {
            format!(
                r#"{{"id":{id},"name":"User number {id:02}","email":"user{id:02}@example.com","age":{},"active":true}}"#,
                20 + id
            )
        })
        .collect();
    Bytes::from(format!("[{}]", users.join(",")))
}
