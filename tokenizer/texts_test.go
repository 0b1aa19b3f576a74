package tokenizer

import (
	"math/rand/v2"
	"strings"
)

// englishText is a few KB of ordinary English prose, for tests and the
// benchmark.
var englishText = strings.Repeat(`The old lighthouse keeper had lived on the island for nearly forty years, and in all that time he'd never once missed lighting the lamp. Each evening he climbed the ninety-seven steps, trimmed the wick, polished the brass, and watched the beam sweep out across the grey water. Ships he couldn't see would pass in the night; he knew them only by their horns, long and low, or short and impatient. "They're counting on us," he'd tell the gulls, who weren't listening. In the spring of 1987 a letter arrived: the light was to be automated, and he would be moved to the mainland with a pension of $412.50 a month. He read it twice, folded it into quarters, and put it in the drawer with the others. Then he went up the stairs again, because it was getting dark, and somebody had to.
`, 5)

// referenceTexts are varied texts that the encoder must handle exactly as
// GPT-2 does.
var referenceTexts = []string{
	"",
	"Hello world",
	"Hello, world!",
	"hello",
	" ",
	"  ",
	"   leading spaces",
	"trailing spaces   ",
	" leading and trailing ",
	"a  b   c    d",
	"\t",
	"tab\there",
	"tabs\t\t\tthen text",
	"line one\nline two\n",
	"\n\n\nparagraph\n\n",
	"windows\r\nline ends\r\n",
	" \t \n mixed \n\t whitespace \t",
	"ends with newline\n",
	"\n",
	"space before newline \nnext",
	"I'm sure you're right, they've said it's what we'll do, I'd say.",
	"DON'T SHOUT, IT'S RUDE. WE'RE HERE. THEY'VE GONE. I'M OK. WE'LL SEE. HE'D KNOW.",
	"'s 't 're 've 'm 'll 'd",
	"''s ''t '''re 'x 'S",
	"rock 'n' roll, 'tis the season, o'clock",
	"Numbers: 0 1 12 123 1234 12345 3.14159 -42 1,000,000 1e10 0x1F",
	"2023-10-05T12:34:56Z",
	"version 1.2.3-rc4+build5",
	"½ ¼ ² ³ Ⅻ ٣٤٥ ४२ ①②",
	"!!! ??? ... --- *** ### $$$ %%% &&& @@@ ~~~ ^^^",
	"Punctuation...!?;:—–-\"'`()[]{}<>/\\|",
	" .,;:!? mixed punct ,.",
	"email@example.com https://example.org/path?q=1&r=2#frag",
	"def f(x):\n    return x ** 2  # square\n",
	"if (a && b || !c) { x += 1; } else { y -= 2; }",
	"<html><body class=\"main\">Text</body></html>",
	"Café naïve résumé façade coöperate Ångström",
	"e\u0301 combining acute, n\u0303 tilde",
	"Straße Größe Übung",
	"Привет, мир! Как дела?",
	"Γειά σου Κόσμε",
	"中文测试：你好，世界！",
	"日本語のテキスト、カタカナとひらがな。",
	"한국어 텍스트입니다",
	"ไทย ภาษา",
	"हिन्दी पाठ",
	"שלום עולם",
	"مرحبا بالعالم",
	"mixed עברית and English مع العربية",
	"emoji 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇫🇷🇯🇵 ❤️ ✨",
	"😀",
	"a😀b",
	" 😀 ",
	"🏳️‍🌈 flag",
	"no\u00a0break\u00a0space and ideographic\u3000space and em\u2003space",
	"line\u2028separator and paragraph\u2029separator",
	"zero\u200bwidth\u200cjoiners\u200d",
	"© ® ™ € £ ¥ § ¶ • … « » ‹ › „ “ ” ‘ ’",
	"𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝐛𝐨𝐥𝐝 math",
	"\x00\x01\x02 control \x1b[31mred\x1b[0m \x7f",
	"<|endoftext|>",
	"</s> <s> <pad> <unk>",
	"supercalifragilisticexpialidocious antidisestablishmentarianism",
	"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
	"                                                                  x",
	strings.Repeat("ab", 300),
	strings.Repeat("=", 100) + "\n" + strings.Repeat("-", 80),
	englishText,
}

// randomTextRunes are the characters random reference texts are made of:
// many classes, but none whose class differs between Go and the JavaScript
// reference (U+0085, U+FEFF) or that was assigned after Unicode 15.0.
var randomTextRunes = []rune(" \t\n\r  'sdtrevlmSDT.,!?-_:;\"()[]{}/\\@#$%^&*+=<>|~`" +
	"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789" +
	"éèêëàâäôöûüçñÅßæøœ\u0301\u0308" +
	"中文字日本語かなカナ한국어" + "שלוםمرحبا٣" + "Привет" + "Ωλφ" +
	"½²Ⅻ①" + "😀👍🏽🇫🇷\u200d❤\ufe0f✨" + "\u00a0\u3000\u2003\u2028" + "©€™…«»“”’—" + "\x00\x1b\x7f")

var randomWords = []string{"the", " the", "The", " of", " and", "ing", "'s", "'ll", "'re", "'ve", "'m", "'d", "'t",
	" don't", "I'm", "  ", "\n\n", " 123", "4567", " hello", "world", "!!", " ?", "...", " —", "😀"}

// randomText returns a random text mixing whole words and single characters.
func randomText(r *rand.Rand, maxLen int) string {
	var sb strings.Builder
	n := r.IntN(maxLen + 1)
	for i := 0; i < n; i++ {
		if r.IntN(3) == 0 {
			sb.WriteString(randomWords[r.IntN(len(randomWords))])
		} else {
			sb.WriteRune(randomTextRunes[r.IntN(len(randomTextRunes))])
		}
	}
	return sb.String()
}
