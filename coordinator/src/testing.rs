//! Helpers shared by this crate's unit tests.

use consortia_he::{
    CollectiveKeyAggregator, CollectivePublicKey, HeParams, KeySession, KeyShareGen, PartyId,
};

/// A collective key of `parties` made in-process (session id `[id; 32]`),
/// through the same commit-then-reveal steps the partners run.
pub(crate) fn collective_key(params: HeParams, parties: u32, id: u8) -> CollectivePublicKey {
    let session = KeySession::new(params, [id; 32]);
    let generator = KeyShareGen::new(&session);
    let shares: Vec<_> = (0..parties)
        .map(|i| generator.generate(PartyId(i)))
        .collect();
    let mut agg = CollectiveKeyAggregator::new(&session, parties).unwrap();
    for s in &shares {
        agg.add_commitment(s.public.party(), s.commitment).unwrap();
    }
    for s in shares {
        agg.add_share(s.public.party(), s.public).unwrap();
    }
    agg.finish().unwrap()
}
