//! Fabric's declarative types, signed envelopes and record acceptance.
