"""The ground floor: errors, atomic files, messages, validation and text helpers that every
other floor uses; it imports nothing of chanloss."""
