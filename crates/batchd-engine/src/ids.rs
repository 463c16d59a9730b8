//! Ids a caller must not be able to guess (job ids, file ids), from the operating system's
//! CSPRNG: another account's id is only ever "not found", and guessing one must not work either.

use batchd_core::JobId;

const ALNUM: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// `len` characters of `[a-z0-9]`, each uniform (bytes past the last whole multiple of 36 are
/// drawn again, so no character is likelier than another).
pub fn unguessable_alnum(len: usize) -> Result<String, getrandom::Error> {
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut buf)?;
        for &b in &buf {
            if out.len() == len {
                break;
            }
            if b < 252 {
                out.push(char::from(ALNUM[usize::from(b % 36)]));
            }
        }
    }
    Ok(out)
}

/// A new job id (12 characters, about 62 bits).
pub fn new_job_id() -> Result<JobId, getrandom::Error> {
    let id = unguessable_alnum(12)?;
    // Twelve characters of [a-z0-9] are a job id by construction.
    Ok(JobId::parse(&id).unwrap_or_else(|_| JobId::from_random(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_alphanumeric_of_their_length_and_differ() {
        let a = unguessable_alnum(24).unwrap();
        assert_eq!(a.len(), 24);
        assert!(a.bytes().all(|b| ALNUM.contains(&b)));
        assert_ne!(a, unguessable_alnum(24).unwrap());
        assert_ne!(new_job_id().unwrap(), new_job_id().unwrap());
    }

    #[test]
    fn every_character_turns_up() {
        // 36 characters in 3,600 draws: a missing one would mean a broken mapping.
        let drawn = unguessable_alnum(3600).unwrap();
        for c in ALNUM {
            assert!(drawn.as_bytes().contains(c), "{}", char::from(*c));
        }
    }
}
