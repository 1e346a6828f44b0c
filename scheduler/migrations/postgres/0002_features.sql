-- App features (Heroku's `features:enable`), e.g. "preboot": a JSON list of names.
ALTER TABLE apps ADD COLUMN features TEXT NOT NULL DEFAULT '[]';
