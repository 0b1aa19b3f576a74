package tokenizer

// GPT-2's byte-level alphabet. Every byte value is represented in token
// strings by one printable character: the bytes that are already printable
// and not whitespace ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves; the
// remaining 68 bytes, in increasing order, are given the characters U+0100,
// U+0101, ... (so the space 0x20 is 'Ġ' U+0120 and '\n' is 'Ċ' U+010A).

// byteToRune maps a byte to the character that stands for it in token strings.
var byteToRune [256]rune

// runeToByte maps a character of the alphabet back to its byte, or -1. Every
// character of the alphabet is below maxAlphabetRune.
var runeToByte [maxAlphabetRune]int16

const maxAlphabetRune = 256 + 68

func init() {
	for i := range runeToByte {
		runeToByte[i] = -1
	}
	n := 0
	for b := 0; b < 256; b++ {
		r := rune(b)
		if !printableByte(b) {
			r = rune(256 + n)
			n++
		}
		byteToRune[b] = r
		runeToByte[r] = int16(b)
	}
}

func printableByte(b int) bool {
	return ('!' <= b && b <= '~') || (0xA1 <= b && b <= 0xAC) || (0xAE <= b && b <= 0xFF)
}

// byteLevelDecode turns a token string of the byte-level alphabet into the
// bytes it stands for. ok is false when a character is outside the alphabet.
func byteLevelDecode(tok string) (b []byte, ok bool) {
	b = make([]byte, 0, len(tok))
	for _, r := range tok {
		if r < 0 || r >= maxAlphabetRune || runeToByte[r] < 0 {
			return nil, false
		}
		b = append(b, byte(runeToByte[r]))
	}
	return b, true
}

// byteLevelEncode turns raw bytes into a token string of the alphabet.
func byteLevelEncode(b []byte) string {
	rs := make([]rune, len(b))
	for i, c := range b {
		rs[i] = byteToRune[c]
	}
	return string(rs)
}
