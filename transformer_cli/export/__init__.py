"""Models out of tfx: the CTranslate2 export."""
