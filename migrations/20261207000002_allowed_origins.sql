-- Browser origins allowed to call an application's routes (CORS), set through the admin API and
-- the operator's `spec.allowedOrigins`: a JSON array of origins (`["https://chat.example.com"]`),
-- NULL for none.

ALTER TABLE applications
    ADD COLUMN allowed_origins TEXT NULL;
