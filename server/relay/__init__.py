"""The media plane: WHIP ingest, encoded-media fan-out to WHEP viewers, PLI/NACK handling."""
