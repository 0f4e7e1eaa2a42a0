"""The special token ids, defined once: every part of tfx agrees on them.

SentencePiece is trained with these ids (data/tokenizer.py), batches pad with PAD_ID and
frame targets with BOS_ID / EOS_ID (data/batching.py), masks and the loss leave PAD_ID
out (model/masks.py, training/loss.py), and search starts from BOS_ID and stops at EOS_ID.
"""

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
SPECIAL_IDS = {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID}
