"""vod-webhook: dependable ApsaraVideo VOD dynamic-image callbacks, fanned out over Redis."""
