"""SentencePiece training and loading; the special token ids are defined here, once."""

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
