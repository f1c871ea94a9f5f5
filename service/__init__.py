"""twitch-cds: a CDS Hooks service for leg and thigh muscle twitching red flags."""
