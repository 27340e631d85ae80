//! Reading glibc's `/etc/ld.so.cache`: the (library name, path) pairs `ldconfig --print-cache`
//! lists, in the same order. Flox's CUDA detection asks ldconfig; the container may have no
//! ldconfig (and the activator runs no programs it does not need), so the file is read here.
//!
//! Formats (glibc `dl-cache.h`): the current one starts with `glibc-ld.so.cache1.1`, a 48-byte
//! header and 24-byte entries whose name and path are offsets from the start of that header;
//! older files start with `ld.so-1.7.0` and 12-byte entries, optionally followed (8-aligned)
//! by the current format, which is then preferred, as glibc does. Pure.

const OLD_MAGIC: &[u8] = b"ld.so-1.7.0";
const NEW_MAGIC: &[u8] = b"glibc-ld.so.cache1.1";
const NEW_HEADER_LEN: usize = 48;
const NEW_ENTRY_LEN: usize = 24;
const OLD_HEADER_LEN: usize = 16;
const OLD_ENTRY_LEN: usize = 12;

/// One cache entry: the library's name (its soname) and the file's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    pub name: Vec<u8>,
    pub path: Vec<u8>,
}

/// The entries of a cache file; None when it is not one (a truncated or foreign file).
pub fn parse(cache: &[u8]) -> Option<Vec<CacheEntry>> {
    if cache.starts_with(NEW_MAGIC) {
        return parse_new(cache);
    }
    if !cache.starts_with(OLD_MAGIC) {
        return None;
    }
    let nlibs = u32_at(cache, 12)? as usize;
    let entries_end = OLD_HEADER_LEN.checked_add(nlibs.checked_mul(OLD_ENTRY_LEN)?)?;
    let new_start = entries_end.checked_add(7)? & !7;
    if let Some(new) = cache.get(new_start..).filter(|rest| rest.starts_with(NEW_MAGIC)) {
        return parse_new(new);
    }
    // Old format only: strings are relative to the end of the entry table.
    let strings = cache.get(entries_end..)?;
    (0..nlibs)
        .map(|i| {
            let entry = OLD_HEADER_LEN + i * OLD_ENTRY_LEN;
            Some(CacheEntry {
                name: c_string(strings, u32_at(cache, entry + 4)? as usize)?,
                path: c_string(strings, u32_at(cache, entry + 8)? as usize)?,
            })
        })
        .collect()
}

fn parse_new(cache: &[u8]) -> Option<Vec<CacheEntry>> {
    let nlibs = u32_at(cache, 20)? as usize;
    let table_end = NEW_HEADER_LEN.checked_add(nlibs.checked_mul(NEW_ENTRY_LEN)?)?;
    if table_end > cache.len() {
        return None;
    }
    (0..nlibs)
        .map(|i| {
            let entry = NEW_HEADER_LEN + i * NEW_ENTRY_LEN;
            Some(CacheEntry {
                name: c_string(cache, u32_at(cache, entry + 4)? as usize)?,
                path: c_string(cache, u32_at(cache, entry + 8)? as usize)?,
            })
        })
        .collect()
}

fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    let field = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_ne_bytes(field.try_into().ok()?))
}

fn c_string(bytes: &[u8], offset: usize) -> Option<Vec<u8>> {
    let rest = bytes.get(offset..)?;
    let len = rest.iter().position(|byte| *byte == 0)?;
    Some(rest[..len].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache in the current format with the given (name, path) pairs.
    pub fn new_format(entries: &[(&str, &str)]) -> Vec<u8> {
        let mut strings = Vec::new();
        let strings_start = NEW_HEADER_LEN + entries.len() * NEW_ENTRY_LEN;
        let mut table = Vec::new();
        for (name, path) in entries {
            let name_offset = strings_start + strings.len();
            strings.extend_from_slice(name.as_bytes());
            strings.push(0);
            let path_offset = strings_start + strings.len();
            strings.extend_from_slice(path.as_bytes());
            strings.push(0);
            table.extend_from_slice(&0x0303i32.to_ne_bytes());
            table.extend_from_slice(&(name_offset as u32).to_ne_bytes());
            table.extend_from_slice(&(path_offset as u32).to_ne_bytes());
            table.extend_from_slice(&[0; 12]);
        }
        let mut cache = NEW_MAGIC.to_vec();
        cache.extend_from_slice(&(entries.len() as u32).to_ne_bytes());
        cache.extend_from_slice(&(strings.len() as u32).to_ne_bytes());
        cache.resize(NEW_HEADER_LEN, 0);
        cache.extend(table);
        cache.extend(strings);
        cache
    }

    #[test]
    fn reads_the_current_format() {
        let cache = new_format(&[("libcuda.so.1", "/usr/lib/libcuda.so.1"), ("libc.so.6", "/lib/libc.so.6")]);
        let entries = parse(&cache).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].name, b"libcuda.so.1");
        assert_eq!(entries[1].path, b"/lib/libc.so.6");
    }

    #[test]
    fn prefers_the_current_format_after_an_old_table() {
        let mut cache = OLD_MAGIC.to_vec();
        cache.push(0);
        cache.extend_from_slice(&1u32.to_ne_bytes());
        cache.extend_from_slice(&[0; OLD_ENTRY_LEN]); // one old entry, never read
        cache.resize((cache.len() + 7) & !7, 0);
        cache.extend(new_format(&[("libnvidia-ml.so.1", "/x/libnvidia-ml.so.1")]));
        assert_eq!(parse(&cache).unwrap()[0].name, b"libnvidia-ml.so.1");
    }

    #[test]
    fn truncated_and_foreign_files_are_none() {
        let cache = new_format(&[("libcuda.so.1", "/usr/lib/libcuda.so.1")]);
        assert!(parse(&cache[..cache.len() - 3]).is_none(), "string cut short");
        assert!(parse(&cache[..30]).is_none());
        assert!(parse(b"not a cache").is_none());
        assert!(parse(b"").is_none());
    }

    #[test]
    fn agrees_with_ldconfig_on_this_machine() {
        // The host's cache, as `ldconfig --print-cache` lists it.
        let bytes = std::fs::read("/etc/ld.so.cache").expect("this machine's /etc/ld.so.cache");
        let output =
            std::process::Command::new("/usr/sbin/ldconfig").args(["--print-cache"]).output().expect("ldconfig");
        let listed: Vec<String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.split_once(" => ").map(|(_, path)| path.to_string()))
            .collect();
        let parsed: Vec<String> =
            parse(&bytes).unwrap().into_iter().map(|e| String::from_utf8(e.path).unwrap()).collect();
        assert_eq!(parsed, listed);
    }
}
