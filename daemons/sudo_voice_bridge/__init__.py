"""sudo-voice-bridge: a family's spoken words to its own agent and the answer back, through LiveKit."""
