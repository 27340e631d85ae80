//! S3's error answers: `<Error><Code>NoSuchBucket</Code><Message>…</Message>…</Error>`. Only
//! the code and message are taken (bounded), to tell a missing bucket or refused credentials
//! from a missing object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3ErrorBody {
    pub code: String,
    pub message: String,
}

/// The code and message of an S3 error document, if `body` is one.
pub fn parse(body: &str) -> Option<S3ErrorBody> {
    let field = |tag: &str| {
        let open = format!("<{tag}>");
        let start = body.find(&open)? + open.len();
        let end = body[start..].find(&format!("</{tag}>"))? + start;
        Some(body[start..end].chars().take(300).collect::<String>())
    };
    Some(S3ErrorBody { code: field("Code")?, message: field("Message").unwrap_or_default() })
}

/// Whether an S3 error code means "this object is not there" (as opposed to the bucket, the
/// credentials or the service).
pub fn is_missing_object(code: &str) -> bool {
    code == "NoSuchKey"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_and_message() {
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NoSuchBucket</Code><Message>Bucket not found: nope</Message><Resource>/nope/x</Resource></Error>";
        assert_eq!(
            parse(body),
            Some(S3ErrorBody { code: "NoSuchBucket".into(), message: "Bucket not found: nope".into() })
        );
        assert_eq!(parse("<html>nginx</html>"), None);
        assert!(is_missing_object("NoSuchKey") && !is_missing_object("NoSuchBucket"));
    }
}
