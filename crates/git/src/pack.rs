//! A batch's objects written as one pack, with its index and `.keep`, as git's
//! `index-pack --keep` leaves them.

use std::path::{Path, PathBuf};

use gix::ObjectId;

use crate::error::RepoError;

/// A pack just written, kept (`.keep`) from `git gc` until refs point into it.
pub(crate) struct KeptPack {
    keep: PathBuf,
    /// Where the `.keep` goes back to when it is let go, for the next pack to take.
    spare: PathBuf,
}

impl KeptPack {
    /// Lets `git gc` have the pack (its objects are referenced now, or never will be). The
    /// `.keep` is moved back to the spare place rather than deleted: on ext4 without a journal,
    /// every file created searches past the inodes deleted in the last minutes, so a burst that
    /// created and deleted one per batch slowed each next file down.
    pub(crate) fn release(self) {
        if std::fs::rename(&self.keep, &self.spare).is_err()
            && let Err(error) = std::fs::remove_file(&self.keep)
        {
            tracing::warn!(path = %self.keep.display(), error = %error, "could not remove a pack's .keep file");
        }
    }
}

/// Writes `objects` as one pack and its index (version 2) in the repository's pack directory,
/// as git's `index-pack --keep` leaves them: the `.keep` first, then the pack, then the index
/// that makes it visible. Each object's id is known, so the index is written from what was
/// packed, without reading the pack back.
pub(crate) fn write_pack(repo: &gix::Repository, objects: &gix::odb::memory::Storage) -> Result<KeptPack, RepoError> {
    use std::io::Write as _;
    let io = |e: std::io::Error| RepoError::Git(format!("cannot write a pack: {e}"));
    let count = u32::try_from(objects.len()).map_err(|_| RepoError::Git("too many objects for one pack".into()))?;
    let mut pack = Vec::with_capacity(64 + objects.values().map(|(_, data)| data.len()).sum::<usize>());
    pack.extend_from_slice(b"PACK");
    pack.extend_from_slice(&2u32.to_be_bytes());
    pack.extend_from_slice(&count.to_be_bytes());
    // (id, crc32 of the entry as packed, its offset), for the index.
    let mut entries: Vec<(ObjectId, u32, u32)> = Vec::with_capacity(objects.len());
    for (id, (kind, data)) in objects.iter() {
        let offset = u32::try_from(pack.len())
            .ok()
            .filter(|offset| offset >> 31 == 0)
            .ok_or_else(|| RepoError::Git("a batch's pack would pass 2 GiB".into()))?;
        // The entry header: type and size, seven bits at a time after the first four.
        let type_id: usize = match kind {
            gix::object::Kind::Commit => 1,
            gix::object::Kind::Tree => 2,
            gix::object::Kind::Blob => 3,
            gix::object::Kind::Tag => 4,
        };
        let mut size = data.len();
        let mut byte = ((type_id << 4) | (size & 0x0f)) as u8;
        size >>= 4;
        while size > 0 {
            pack.push(byte | 0x80);
            byte = (size & 0x7f) as u8;
            size >>= 7;
        }
        pack.push(byte);
        let mut deflate = gix::zlib::stream::deflate::Write::new(&mut pack, gix::zlib::Compression::BEST_SPEED);
        deflate.write_all(data).map_err(io)?;
        deflate.flush().map_err(io)?;
        drop(deflate);
        entries.push((*id, crc32fast::hash(&pack[offset as usize..]), offset));
    }
    let digest = sha1(&pack)?;
    pack.extend_from_slice(digest.as_slice());

    entries.sort_unstable_by_key(|(id, _, _)| *id);
    let mut index = Vec::with_capacity(8 + 256 * 4 + entries.len() * 28 + 40);
    index.extend_from_slice(b"\xfftOc");
    index.extend_from_slice(&2u32.to_be_bytes());
    let mut below = 0u32;
    for first in 0..=255u8 {
        below += entries.iter().filter(|(id, _, _)| id.as_slice()[0] == first).count() as u32;
        index.extend_from_slice(&below.to_be_bytes());
    }
    for (id, _, _) in &entries {
        index.extend_from_slice(id.as_slice());
    }
    for (_, crc, _) in &entries {
        index.extend_from_slice(&crc.to_be_bytes());
    }
    for (_, _, offset) in &entries {
        index.extend_from_slice(&offset.to_be_bytes());
    }
    index.extend_from_slice(digest.as_slice());
    let index_digest = sha1(&index)?;
    index.extend_from_slice(index_digest.as_slice());

    let directory = repo.objects.store_ref().path().join("pack");
    let name = format!("pack-{}", digest.to_hex());
    let kept = KeptPack {
        keep: directory.join(format!("{name}.keep")),
        spare: repo.path().join("selfheal-pack.keep"),
    };
    if std::fs::rename(&kept.spare, &kept.keep).is_err() {
        std::fs::write(&kept.keep, b"selfheal: until refs point into it\n").map_err(io)?;
    }
    let written = place(&directory, &format!("{name}.pack"), &pack)
        .and_then(|()| place(&directory, &format!("{name}.idx"), &index));
    if let Err(error) = written {
        kept.release();
        return Err(io(error));
    }
    Ok(kept)
}

/// SHA-1 of `bytes`.
fn sha1(bytes: &[u8]) -> Result<ObjectId, RepoError> {
    let mut hasher = gix::hash::hasher(gix::hash::Kind::Sha1);
    hasher.update(bytes);
    hasher
        .try_finalize()
        .map_err(|e| RepoError::Git(format!("cannot hash a pack: {e}")))
}

/// Writes `bytes` to `directory/name` whole or not at all: to a temporary file first (`tmp_…`,
/// which `git gc` clears if left behind), then renamed.
fn place(directory: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let temporary = directory.join(format!("tmp_{name}"));
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, directory.join(name)).inspect_err(|_| {
        let _ = std::fs::remove_file(&temporary);
    })
}
