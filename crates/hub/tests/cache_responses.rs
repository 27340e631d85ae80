//! What one cache file's responses look like through the real `imageless-hub serve`: a plain
//! GET or HEAD (the fast path) answers exactly what tower-http's `ServeFile` answers for the
//! same file (reached here with an `If-Modified-Since` older than the file, which ServeFile
//! answers with the whole file), for a narinfo, a NAR and a file larger than one read chunk;
//! Range still gets 206; a symlink in the cache is not followed on either path.
mod support;

use std::time::{Duration, SystemTime};

use support::{Conn, Root, Server};

const STALL: Duration = Duration::from_secs(20);
/// Older than any file: ServeFile's precondition passes and it answers 200 with the whole file.
const LONG_AGO: &str = "Thu, 01 Jan 1970 00:00:00 GMT";

/// The headers a client compares between the two paths (Date differs by the second).
fn compared(a: &support::Answer) -> Vec<(String, String)> {
    let mut h: Vec<_> = a.headers.iter().filter(|(k, _)| k != "date").cloned().collect();
    h.sort();
    h
}

fn http_date(t: SystemTime) -> String {
    // The expected Last-Modified, computed independently of the server: `date -u -R` style.
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%a, %d %b %Y %H:%M:%S GMT"])
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn plain_get_and_head_answer_what_serve_file_answers() {
    let root = Root::new(true);
    let files = root.cache_files();
    let narinfo = files.iter().find(|r| r.ends_with(".narinfo")).unwrap().clone();
    let nar = files.iter().find(|r| r.starts_with("nar/")).unwrap().clone();
    // Larger than the fast path reads in one go: its body streams in chunks.
    let big: Vec<u8> = (0..3 * 1024 * 1024 + 12345).map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(root.cache().join("nar/big.nar.zst"), &big).unwrap();
    let server = Server::start(root.path(), &[]);
    let mut conn = Conn::open(&server.hostport, STALL).unwrap();

    for rel in [narinfo.as_str(), nar.as_str(), "nar/big.nar.zst", "nix-cache-info"] {
        let path = format!("/cache/{rel}");
        let on_disk = std::fs::read(root.cache().join(rel)).unwrap();
        let modified = std::fs::metadata(root.cache().join(rel)).unwrap().modified().unwrap();

        let fast = conn.request("GET", &path, &[]).unwrap();
        let served_file = conn.request("GET", &path, &[("If-Modified-Since", LONG_AGO)]).unwrap();
        assert_eq!(fast.status, 200, "{rel}: {:?}", fast.headers);
        assert_eq!(served_file.status, 200, "{rel}: {:?}", served_file.headers);
        assert!(fast.body == on_disk, "{rel}: GET body differs from the file ({} bytes)", fast.body.len());
        assert!(served_file.body == on_disk, "{rel}: ServeFile body differs from the file");
        assert_eq!(compared(&fast), compared(&served_file), "{rel}");
        assert_eq!(fast.header("content-length"), Some(on_disk.len().to_string().as_str()), "{rel}");
        assert_eq!(fast.header("content-type"), Some(imageless_hub::cache::content_type(rel)), "{rel}");
        assert_eq!(fast.header("last-modified"), Some(http_date(modified).as_str()), "{rel}");
        assert_eq!(fast.header("accept-ranges"), Some("bytes"), "{rel}");

        let head = conn.request("HEAD", &path, &[]).unwrap();
        let head_served_file = conn.request("HEAD", &path, &[("If-Modified-Since", LONG_AGO)]).unwrap();
        assert_eq!(head.status, 200, "{rel}");
        assert_eq!(compared(&head), compared(&fast), "{rel}: HEAD headers differ from GET's");
        assert_eq!(compared(&head), compared(&head_served_file), "{rel}");

        // Range and conditional requests are still ServeFile's.
        let range = conn.request("GET", &path, &[("Range", "bytes=1-10")]).unwrap();
        assert_eq!(range.status, 206, "{rel}: {:?}", range.headers);
        assert_eq!(range.header("content-range"), Some(format!("bytes 1-10/{}", on_disk.len()).as_str()), "{rel}");
        assert!(range.body == on_disk[1..=10], "{rel}");
        let last_modified = fast.header("last-modified").unwrap().to_owned();
        let unchanged = conn.request("GET", &path, &[("If-Modified-Since", &last_modified)]).unwrap();
        assert_eq!(unchanged.status, 304, "{rel}: {:?}", unchanged.headers);
    }
    // The connection is still in step after a HEAD: a raw read of the HEAD answer would have
    // swallowed a body here and broken the next response.
    let a = conn.request("GET", "/cache/nix-cache-info", &[]).unwrap();
    assert!(a.body.starts_with(b"StoreDir: /nix/store\n"), "{a:?}");
    server.stop();
}

#[test]
fn symlinks_and_non_files_in_the_cache_are_not_served() {
    let root = Root::new(true);
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "not a cache file\n").unwrap();
    let narinfo = root.cache_files().into_iter().find(|r| r.ends_with(".narinfo")).unwrap();
    // A link out of the cache, a link to a real cache file, a directory where a NAR would be.
    std::os::unix::fs::symlink(outside.path().join("secret"), root.cache().join("nar/outside.nar")).unwrap();
    std::os::unix::fs::symlink(
        root.cache().join(&narinfo),
        root.cache().join("00000000000000000000000000000001.narinfo"),
    )
    .unwrap();
    std::fs::create_dir(root.cache().join("nar/dir.nar")).unwrap();
    let server = Server::start(root.path(), &[]);
    let mut conn = Conn::open(&server.hostport, STALL).unwrap();
    for rel in ["nar/outside.nar", "00000000000000000000000000000001.narinfo", "nar/dir.nar", "nar"] {
        let path = format!("/cache/{rel}");
        for (method, headers) in [
            ("GET", vec![]),
            ("HEAD", vec![]),
            ("GET", vec![("Range", "bytes=0-3")]),
            ("GET", vec![("If-Modified-Since", LONG_AGO)]),
        ] {
            let a = conn.request(method, &path, &headers).unwrap();
            assert_eq!(a.status, 404, "{method} {rel} {headers:?}: {:?}", a.headers);
            assert!(!String::from_utf8_lossy(&a.body).contains("not a cache file"), "{method} {rel}");
        }
    }
    // A cache whose nar directory is a link elsewhere.
    let moved = root.path().join("nar-elsewhere");
    std::fs::rename(root.cache().join("nar"), &moved).unwrap();
    std::os::unix::fs::symlink(&moved, root.cache().join("nar")).unwrap();
    let nar = std::fs::read_dir(&moved).unwrap().next().unwrap().unwrap().file_name().into_string().unwrap();
    assert_eq!(conn.request("GET", &format!("/cache/nar/{nar}"), &[]).unwrap().status, 404, "{nar}");
    // And the real files are still served.
    assert_eq!(conn.request("GET", &format!("/cache/{narinfo}"), &[]).unwrap().status, 200);
    server.stop();
}
